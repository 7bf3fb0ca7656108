"""The text of the Figure-2 reproduction page: the conditions paragraph and the tables of bounds.

Each run's last evaluation beside the paper's value read from its Fig. 2, each run's test bound at
fixed counts of samples seen, AEVB against wake-sleep at equal samples seen, and over seeds; all in
nats per data point (the ELBO). Kept apart from the page's assembly and figures in
``reproduction`` because these are the numbers compared with the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from vae_lightning.reports.reproduction_runs import (
    DATA_NAMES,
    METHODS,
    TEST,
    TRAIN,
    Run,
    at_samples,
    curve_points,
)

MILESTONES = (1e6, 1e7)  # samples seen at which every run's test bound is tabulated

# The test-set lower bound (nats per data point) read by eye from Kingma & Welling (2013),
# "Auto-Encoding Variational Bayes", Figure 2, at the right edge of each panel, i.e. after
# "samples" training samples evaluated (about 2e8 for MNIST). The figure gives a few nats at best;
# wake-sleep's Frey Face curves end at about the same height in every panel, and only its MNIST
# Nz = 20 curve can be read with any confidence.
PAPER: dict[str, dict[str, Any]] = {
    "frey": {"samples": 1e8,
             "aevb": {2: 870, 5: 1115, 10: 1305, 20: 1310},
             "wake_sleep": {2: 575, 5: 575, 10: 575, 20: 575}},
    "mnist": {"samples": 2e8,
              "aevb": {3: -133.5, 5: -119, 10: -103.5, 20: -99.5, 200: -99.5},
              "wake_sleep": {20: -104}},
}


def _get(config: dict[str, Any], *dotted: str) -> Any:
    """The value at the first of the dotted keys that ``config`` has (runs written before the
    model's config was nested keep their older keys), else None."""
    for key in dotted:
        value: Any = config
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            return value
    return None


def _condition(runs: list[Run], value: Callable[[Run], Any], per_method: bool = False) -> str:
    """The value every run shares, else each method's values ("AEVB: a / wake-sleep: b, c")."""
    def distinct(rs: list[Run]) -> str:
        values = []
        for r in rs:
            v = value(r)
            text = "not recorded" if v is None else str(v)
            if text not in values:
                values.append(text)
        return ", ".join(values)

    if not per_method and len({distinct([r]) for r in runs}) == 1:
        return distinct(runs[:1])
    methods = [m for m in METHODS if any(r.method == m for r in runs)]
    return " / ".join(f"{METHODS[m]}: {distinct([r for r in runs if r.method == m])}"
                     for m in methods)


def _optimizer(run: Run) -> str | None:
    target = _get(run.config, "model.optimizer._target_", "optimizer._target_")
    lr = _get(run.config, "model.optimizer.lr", "optimizer.lr")
    if target is None and lr is None:
        return None
    name = str(target).rsplit(".", 1)[-1] if target is not None else "optimizer"
    return f"{name} (lr {lr:g})" if isinstance(lr, int | float) else f"{name} (lr {lr})"


def _hidden(run: Run) -> str | None:
    encoder = _get(run.config, "model.encoder.net.hidden", "model.encoder_hidden")
    decoder = _get(run.config, "model.decoder.net.hidden", "model.decoder_hidden")
    if encoder is None:
        return None
    if decoder is None or decoder == encoder:
        return str(encoder)
    return f"encoder {encoder}, decoder {decoder}"


def _activation(run: Run) -> str | None:
    return _get(run.config, "model.encoder.net.activation", "model.activation")


def _scale(run: Run) -> str | None:
    scale = _get(run.config, "data.scale")
    if scale is None:
        return None
    return f"1/{scale:g}" if isinstance(scale, int | float) else f"1/{scale}"


def _splits(run: Run) -> str:
    def size(n: int | None) -> str:
        return "not recorded" if n is None else f"{n:,}"

    return f"{size(run.train_size)} training / {size(run.test_size)} test points"


def _sci(n: float) -> str:
    """A count in short scientific notation: 1e8, 2.5e6."""
    mantissa, exponent = f"{n:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _samples(runs: list[Run]) -> str:
    def span(rs: list[Run]) -> str:
        lo, hi = min(r.samples_seen for r in rs), max(r.samples_seen for r in rs)
        return f"{lo:,}" if lo == hi else f"{lo:,} to {hi:,}"

    if len({r.samples_seen for r in runs}) == 1:
        return span(runs)
    methods = [m for m in METHODS if any(r.method == m for r in runs)]
    return " / ".join(f"{METHODS[m]}: {span([r for r in runs if r.method == m])}" for m in methods)


def conditions(runs: list[Run]) -> str:
    """One paragraph: what the runs of one data set were trained and evaluated on."""
    splits = _condition(runs, _splits)
    parts = [
        f"latent sizes Nz = {', '.join(str(n) for n in sorted({r.latent for r in runs}))}",
        f"split sizes (the bounds average over them): {splits}",
        f"pixels scaled by {_condition(runs, _scale)}",
        f"binarization: {_condition(runs, lambda r: _get(r.config, 'data.binarize') or 'none')}",
        f"minibatch {_condition(runs, lambda r: _get(r.config, 'data.batch_size'))}",
        f"optimizer {_condition(runs, _optimizer, per_method=True)}",
        f"hidden units {_condition(runs, _hidden)}",
        f"activation {_condition(runs, _activation)}",
        f"seed {_condition(runs, lambda r: _get(r.config, 'seed'))}",
        f"training samples seen at the last evaluation: {_samples(runs)}",
    ]
    return "Conditions: " + "; ".join(parts) + "."


def paper_value(run: Run) -> str:
    """The paper's test bound for the run's panel and method, with the count it was read at
    when the run's own count differs from it by more than 5%; "—" where the paper has none."""
    paper = PAPER.get(run.data, {})
    value = paper.get(run.method, {}).get(run.latent)
    if value is None:
        return "—"
    count = paper["samples"]
    if abs(run.samples_seen / count - 1) <= 0.05:
        return f"≈ {value:g}"
    return f"≈ {value:g} at {_sci(count)}"


def _bound(value: Any) -> str:
    return "—" if value is None else f"{float(value):.2f}"


def results_table(runs: list[Run]) -> str:
    """A row per run, its last evaluation beside the paper's test bound."""
    lines = ["| Nz | method | samples seen | train bound | test bound "
             "| paper (test, read from its Fig. 2) | status | run |",
             "|" + " --- |" * 8]
    for r in runs:
        lines.append(f"| {r.latent} | {METHODS[r.method]} | {r.samples_seen:,} "
                     f"| {_bound(r.last.get(TRAIN))} | {_bound(r.last.get(TEST))} "
                     f"| {paper_value(r)} | {r.status} | `{r.dir}` |")
    return "\n".join(lines) + "\n"


def milestones_table(runs: list[Run]) -> str:
    """Each run's test bound at the MILESTONES counts of samples seen (interpolated; "—" where
    the run's curve does not reach the count), and the paper's at its end."""
    head = " | ".join(f"test at {_sci(n)}" for n in MILESTONES)
    lines = [f"| Nz | method | {head} | test at the end (samples) | paper at its end |",
             "|" + " --- |" * (len(MILESTONES) + 4)]
    for r in runs:
        seen, _ = curve_points(r.points, TEST)
        cells = [f"{at_samples(r.points, n):.2f}" if seen and seen[0] <= n <= seen[-1] else "—"
                 for n in MILESTONES]
        paper = PAPER.get(r.data, {})
        value = paper.get(r.method, {}).get(r.latent)
        end = "—" if value is None else f"≈ {value:g} at {_sci(paper['samples'])}"
        lines.append(f"| {r.latent} | {METHODS[r.method]} | {' | '.join(cells)} "
                     f"| {_bound(r.last.get(TEST))} ({_sci(r.samples_seen)}) | {end} |")
    return "\n".join(lines) + "\n"


def equal_samples_table(runs: list[Run]) -> str:
    """For each latent size with both methods, their test bounds at each of the MILESTONES that
    both reached and at the largest samples seen that both reached, each curve interpolated
    linearly in log10(samples seen)."""
    by_key = {(r.latent, r.method): r for r in runs}
    latents = sorted({r.latent for r in runs if (r.latent, "aevb") in by_key
                      and (r.latent, "wake_sleep") in by_key})
    if not latents:
        return "No latent size has both an AEVB and a wake-sleep run.\n"
    lines = ["| Nz | samples seen (both) | AEVB test bound | wake-sleep test bound | AEVB − WS |",
             "|" + " --- |" * 5]
    for latent in latents:
        aevb, ws = by_key[latent, "aevb"], by_key[latent, "wake_sleep"]
        (a_seen, _), (w_seen, _) = (curve_points(r.points, TEST) for r in (aevb, ws))
        if not a_seen or not w_seen or min(a_seen[-1], w_seen[-1]) < max(a_seen[0], w_seen[0]):
            lines.append(f"| {latent} | no common range | — | — | — |")
            continue
        lo, hi = max(a_seen[0], w_seen[0]), min(a_seen[-1], w_seen[-1])
        for n in [m for m in MILESTONES if lo <= m < hi] + [hi]:
            a, w = at_samples(aevb.points, n), at_samples(ws.points, n)
            lines.append(f"| {latent} | {int(n):,} | {a:.2f} | {w:.2f} | {a - w:+.2f} |")
    return "\n".join(lines) + "\n"


def seeds_table(runs: list[Run], upto: float = 1e5) -> str:
    """AEVB minus wake-sleep test bound at each evaluation up to ``upto`` samples seen, over
    seeds: for each (data, Nz) with at least two seeds of both methods, the mean of the per-seed
    differences (each seed's AEVB run against the same seed's wake-sleep run, at the same counts:
    the curves share their evaluation points) and its standard error, sd / sqrt(seeds)."""
    by = {}
    for run in runs:
        seed = run.config.get("seed")
        by.setdefault((run.data, run.latent), {}).setdefault(seed, {})[run.method] = run
    lines = ["| data | Nz | samples seen | seeds | AEVB − wake-sleep (mean ± s.e.) "
             "| AEVB ahead in |", "|" + " --- |" * 6]
    for (data, latent), seeds in sorted(by.items()):
        pairs = {s: m for s, m in seeds.items() if {"aevb", "wake_sleep"} <= set(m)}
        if len(pairs) < 2:
            continue
        counts = sorted({p["samples_seen"] for m in pairs.values() for p in m["aevb"].points
                         if p["samples_seen"] <= upto})
        for n in counts:
            diffs = []
            for methods in pairs.values():
                a, w = ({p["samples_seen"]: p[TEST] for p in methods[m].points}.get(n)
                        for m in ("aevb", "wake_sleep"))
                if a is not None and w is not None:
                    diffs.append(a - w)
            if len(diffs) < 2:
                continue
            mean = sum(diffs) / len(diffs)
            sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
            lines.append(f"| {DATA_NAMES.get(data, data)} | {latent} | {int(n):,} | "
                         f"{len(diffs)} | {mean:+.2f} ± {sd / math.sqrt(len(diffs)):.2f} | "
                         f"{sum(d > 0 for d in diffs)} of {len(diffs)} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""
