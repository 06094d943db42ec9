"""Predicted against true velocity of the boxes a submission matches (what a model learned
about motion).

    python tools/velocity_report.py RESULTS_JSON [RESULTS_JSON ...] --infos INFO_FILE
        [--max-distance 2] [--differenced DATAROOT [--version v1.0-mini]]

For each submission (e.g. ``tools/test.py --out`` with and without ``--drop-past-frames``),
prints the matched boxes' mean velocity error, mean true and predicted speed, the share of
moving boxes (> 1 m/s) predicted as static (< 0.5 m/s) and the speed correlation
(``bevformer/evaluation/velocity.py``). With ``--differenced DATAROOT`` it also writes, next
to each submission, ``<name>_differenced.json`` with the velocities replaced by the displacement
of the model's own boxes since the previous keyframe, prints its row, and scores both with
DetectionEval (NDS, mAVE; the metric files go to ``<name>_eval/`` beside each file): how much
motion the model's localisation alone carries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from bevformer.data.infos import load_infos
from bevformer.evaluation import evaluate_nds, write_submission
from bevformer.evaluation.velocity import (
    differenced_results,
    matched_velocities,
    velocity_summary,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="submission JSON(s) of the info file's split")
    parser.add_argument("--infos", required=True, help="the split's info file (ground truth)")
    parser.add_argument("--max-distance", type=float, default=2.0, help="match radius, metres")
    parser.add_argument("--differenced", metavar="DATAROOT", help="add the differenced rows")
    parser.add_argument("--version", default="v1.0-mini", help="the dataroot's version")
    args = parser.parse_args(argv)
    _, infos = load_infos(args.infos)
    columns = ("matched", "mean_error", "mean_true_speed", "mean_predicted_speed",
               "moving_predicted_static", "speed_correlation")  # fmt: skip
    print("| submission | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    scored = []
    for path in args.results:
        with open(path) as f:
            results = json.load(f)["results"]
        rows = [(path, results)]
        if args.differenced:
            stem, _ = os.path.splitext(path)
            rows.append((f"{stem}_differenced.json", differenced_results(results, infos)))
            write_submission(rows[-1][1], rows[-1][0], expected_tokens=list(results))
        for name, submission in rows:
            summary = velocity_summary(*matched_velocities(submission, infos, args.max_distance))
            print(f"| {name} | " + " | ".join(f"{summary[c]:.3f}" for c in columns) + " |")
        scored += [name for name, _ in rows]
    if args.differenced:
        print("\n| submission | NDS | mAVE |\n|---|---|---|")
        for name in scored:
            stem, _ = os.path.splitext(name)
            metrics = evaluate_nds(name, args.differenced, args.version, output_dir=stem + "_eval")
            print(f"| {name} | {metrics['NDS']:.3f} | {metrics['mAVE']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
