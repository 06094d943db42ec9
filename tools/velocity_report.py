"""Predicted against true velocity of the boxes a submission matches (what a model learned
about motion).

    python tools/velocity_report.py RESULTS_JSON [RESULTS_JSON ...] --infos INFO_FILE
        [--max-distance 2]

For each submission (e.g. ``tools/test.py --out`` with and without ``--drop-past-frames``),
prints the matched boxes' mean velocity error, mean true and predicted speed, the share of
moving boxes (> 1 m/s) predicted as static (< 0.5 m/s) and the speed correlation
(``bevformer/evaluation/velocity.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from bevformer.data.infos import load_infos
from bevformer.evaluation.velocity import matched_velocities, velocity_summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="submission JSON(s) of the info file's split")
    parser.add_argument("--infos", required=True, help="the split's info file (ground truth)")
    parser.add_argument("--max-distance", type=float, default=2.0, help="match radius, metres")
    args = parser.parse_args(argv)
    _, infos = load_infos(args.infos)
    columns = ("matched", "mean_error", "mean_true_speed", "mean_predicted_speed",
               "moving_predicted_static", "speed_correlation")  # fmt: skip
    print("| submission | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for path in args.results:
        with open(path) as f:
            results = json.load(f)["results"]
        summary = velocity_summary(*matched_velocities(results, infos, args.max_distance))
        print(f"| {path} | " + " | ".join(f"{summary[c]:.3f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
