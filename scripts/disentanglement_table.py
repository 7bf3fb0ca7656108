"""The results table of docs/disentanglement.md, from the eval.json files of vae-eval runs with
eval.metrics (one per model), beside the values the papers published.

Usage: python scripts/disentanglement_table.py RUN/eval/eval.json ... [--write PAGE]
(the records: docs/disentanglement/records/*/eval/eval.json; PAGE: docs/disentanglement.md)

Each model is named from its run's record (<run>/.hydra/config.yaml: the objective and its
weights); every score is the mean +- the standard deviation over the metric seeds. With --write,
the table replaces the lines between the page's TABLE_BEGIN and TABLE_END markers; else it is
printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from vae_lightning import rundir

TABLE_BEGIN = "<!-- table: scripts/disentanglement_table.py -->"
TABLE_END = "<!-- end of table -->"
# The scores in the table's order, and their column headings.
COLUMNS = {"beta_vae": "BetaVAE", "factor_vae": "FactorVAE", "mig": "MIG", "sap": "SAP",
           "dci_disentanglement": "DCI D", "dci_completeness": "DCI C",
           "dci_informativeness": "DCI I", "modularity": "Modularity"}
# Values the papers report on the original dSprites, each with where it is printed. Their
# implementations and sample sizes differ from disentanglement_lib's (and ours): a guide to the
# order of magnitude, not a target to match.
PUBLISHED: list[tuple[str, dict[str, str], str]] = [
    ("VAE", {"beta_vae": "0.616"}, "Higgins et al. 2017, 2D shapes (61.58 ± 0.5 %)"),
    ("β-VAE (β = 4)", {"beta_vae": "0.992"}, "Higgins et al. 2017, 2D shapes (99.23 ± 0.1 %)"),
]


# How the table names the objectives' classes, and the settings that are not their weights.
NAMES = {"BetaTC": "β-TC-VAE", "FactorVAE": "FactorVAE", "DIPVAE": "DIP-VAE"}
NOT_WEIGHTS = {"n_samples", "warmup_steps", "latent", "dataset_size"}


def model_name(run: Path) -> str:
    """The model of a run, from its objective: VAE, β-VAE (β = b), or the objective's name
    (DIP-VAE with its kind) with its weights."""
    record = run / rundir.HYDRA / "config.yaml"
    try:
        objective = yaml.safe_load(record.read_text())["model"]["objective"]
        target = str(objective["_target_"]).rsplit(".", 1)[-1]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return run.name
    weights = {k: v for k, v in objective.items() if k not in NOT_WEIGHTS
               and not k.startswith("_") and isinstance(v, int | float)
               and not isinstance(v, bool)}
    if target == "ELBO":
        beta = float(weights.get("beta", 1.0))
        return "VAE" if beta == 1.0 else f"β-VAE (β = {beta:g})"
    name = NAMES.get(target, target)
    if isinstance(objective.get("kind"), str):
        name += "-" + objective["kind"].upper()
    return name + (" (" + ", ".join(f"{k} = {v:g}" for k, v in weights.items()) + ")"
                   if weights else "")


def cell(score: dict[str, Any] | None) -> str:
    if score is None:
        return "–"
    if score.get("std") is None:
        return f"{score['mean']:.3f}"
    return f"{score['mean']:.3f} ± {score['std']:.3f}"


def row(path: Path) -> list[str]:
    results = json.loads(path.read_text())
    found = results.get("disentanglement") or {}
    scores = found.get("scores", {})
    # The run whose record names the model: the folder above <run>/eval/eval.json (a run of
    # benchmarks/disentanglement/run.sh, or its copy in docs/disentanglement/records), else the
    # checkpoint's run.
    run = path.parent.parent
    if not (run / rundir.HYDRA / "config.yaml").is_file():
        run = rundir.of_checkpoint(results["checkpoint"])
    seen = results.get("train_samples_seen")
    iw = results.get("iw", {})
    bound = f"{iw['nats']:.1f} (k = {results['k']}, n = {results['n']})" if iw else "–"
    return [model_name(run), f"{seen:,}" if seen else "–", bound,
            f"{results.get('active_units')}/{results.get('latent')}",
            str(len(found.get("seeds", []))),
            *(cell(scores.get(key)) for key in COLUMNS)]


def table(paths: list[Path]) -> str:
    head = ["model", "images seen", "test log p(x) ≥ (nats)", "active", "seeds",
            *COLUMNS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row(path)) + " |" for path in paths]
    for model, values, source in PUBLISHED:
        lines.append("| " + " | ".join([f"{model}, published: {source}", "", "", "", "",
                                        *(values.get(key, "") for key in COLUMNS)]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="eval.json files")
    parser.add_argument("--write", type=Path, default=None, help="the page to update")
    args = parser.parse_args()
    text = table(args.results)
    if args.write is None:
        print(text)
        return
    page = args.write.read_text()
    if TABLE_BEGIN not in page or TABLE_END not in page:
        sys.exit(f"error: {args.write} has no {TABLE_BEGIN} ... {TABLE_END} block.")
    before, rest = page.split(TABLE_BEGIN, 1)
    after = rest.split(TABLE_END, 1)[1]
    args.write.write_text(f"{before}{TABLE_BEGIN}\n{text}\n{TABLE_END}{after}")
    print(f"updated {args.write}")


if __name__ == "__main__":
    main()
