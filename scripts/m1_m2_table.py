"""The M1+M2 table of docs/evaluation.md, from the records in docs/reproduction/records/:
``m1_m2_draws/`` (the preset: fresh draws over M1's active units), its runs on M1's posterior
means (``means_all_*``), ``m1_m2/`` (the earlier preset on another M1) and the logistic
regression's ``logistic.json`` (scripts/m1_baseline.py). Prints the table's rows (markdown).

    python scripts/m1_m2_table.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

RECORDS = Path(__file__).resolve().parents[1] / "docs" / "reproduction" / "records"
LABELS = (100, 600, 1000, 3000)
# Kingma et al. 2014, Table 1, M1+M2: test error (%) and its standard deviation.
PAPER = {100: "3.33 % (± 0.14)", 600: "2.59 % (± 0.05)", 1000: "2.40 % (± 0.02)",
         3000: "2.18 % (± 0.04)"}


def errors(folder: Path, pattern: str) -> dict[int, float]:
    """Test error (%) per seed of the runs ``pattern`` (with ``{seed}``) under ``folder``."""
    found = {}
    for seed in range(10):
        path = folder / pattern.format(seed=seed) / "eval.json"
        if path.is_file():
            found[seed] = 100 * json.loads(path.read_text())["classification_error"]
    return found


def cell(found: dict[int, float]) -> str:
    """Mean ± the standard deviation over seeds, and each seed's value."""
    if not found:
        return "—"
    values = ", ".join(f"{v:.2f}" for v in found.values())
    seeds = ", ".join(map(str, found))
    if len(found) == 1:
        return f"{values} % (seed {seeds})"
    return (f"{statistics.mean(found.values()):.2f} % ± {statistics.stdev(found.values()):.2f} "
            f"(seeds {seeds}: {values})")


def main() -> None:
    draws, earlier = RECORDS / "m1_m2_draws", RECORDS / "m1_m2"
    logistic = json.loads((draws / "logistic.json").read_text())["test_error"]
    for n in LABELS:
        print(f"| {n} | {cell(errors(draws, f'm2_n{n}_s{{seed}}'))} | "
              f"{cell(errors(draws, f'means_all_n{n}_s{{seed}}'))} | "
              f"{cell(errors(earlier, f'm2_n{n}_s{{seed}}'))} | {PAPER[n]} | "
              f"{100 * logistic[str(n)]:.2f} % |")


if __name__ == "__main__":
    main()
