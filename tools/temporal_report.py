"""What the temporal fusion of a trained two-frame model sees and reads
(``bevformer/evaluation/temporal.py``).

    python tools/temporal_report.py CONFIG CHECKPOINT --data-root DIR [--batches 12]
        [--seed 0] [--radius 3] [--cfg-options key=value ...]

On batches of two training keyframes (the training pipeline, every sample with its past
frame), prints the mean relative difference, per BEV cell, between the current BEV in train
mode (dropout on) and in eval mode ("mode"), against the difference between the past BEV (eval
mode, as in training) and the current one ("time"): over every cell, at the centres of moving
(> 2 m/s) and of static (< 0.2 m/s) boxes. Then the share of the gradient of the top-30
queries' predicted speed, and of their class scores, that reaches the past BEV. Last, for
static (< 0.2 m/s) and moving boxes (> 2 m/s, whose true past cell is not their own), how often
the past-BEV cell most similar to the box's current cell (within +-radius cells) is the box's own
cell or the cell it came from, and the mean absolute offsets, in cells, along rows (lidar y)
and columns (lidar x): whether the BEVs resolve the displacement between the keyframes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from bevformer.builder import build_dataset
from bevformer.data.collate import collate
from bevformer.engine.launch import add_model_arguments, load_model_for_analysis
from bevformer.evaluation.temporal import (
    bev_mode_gap,
    eval_bevs,
    past_cell_match,
    past_gradient_share,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "the dataset (its train split)")
    parser.add_argument("--batches", type=int, default=12, help="batches of two keyframes")
    parser.add_argument("--seed", type=int, default=0, help="dropout and augmentation seed")
    parser.add_argument("--radius", type=int, default=3, help="past-cell search, +-cells")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    cfg, model = load_model_for_analysis(args)
    dataset = build_dataset(cfg.train_dataloader.dataset)
    gaps: dict[str, list[torch.Tensor]] = {}
    shares: dict[str, list[float]] = {}
    matches: dict[str, dict[str, list[torch.Tensor]]] = {}
    step = max(2, len(dataset) // args.batches)
    for i in range(0, len(dataset) - 1, step):
        batch = collate([dataset[i], dataset[i + 1]])
        if not bool(batch["frame_valid"][:, 0].all()):
            continue  # a scene start: no past frame to compare with
        bevs = eval_bevs(model, batch)  # both functions read the same eval-mode BEVs
        for name, values in bev_mode_gap(model, batch, bevs=bevs).items():
            gaps.setdefault(name, []).append(values)
        for name, share in past_gradient_share(model, batch, bevs=bevs).items():
            shares.setdefault(name, []).append(share)
        for kind, offsets in past_cell_match(model, batch, args.radius, bevs=bevs).items():
            for name, values in offsets.items():
                matches.setdefault(kind, {}).setdefault(name, []).append(values)
    if not shares:
        raise SystemExit("no batch had its past frame; is this a temporal info file?")
    print(f"{len(shares['class'])} batches of 2 training keyframes")
    print("| cells | n | train-mode vs eval-mode current BEV | past vs current BEV |")
    print("|---|---|---|---|")
    for cells in ("all", "moving", "static"):
        mode, time = torch.cat(gaps[f"mode_{cells}"]), torch.cat(gaps[f"time_{cells}"])
        print(f"| {cells} | {mode.numel()} | {mode.mean():.3f} | {time.mean():.3f} |")
    print("past-BEV share of the gradient of the top-30 queries' outputs: " + ", ".join(
        f"{name} {sum(v) / len(v):.3f}" for name, v in shares.items()
    ))  # fmt: skip
    print("| boxes | n | best past cell = own cell | = true past cell "
          "| mean abs offset rows, columns: best | true |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for kind, offsets in matches.items():
        best, true = torch.cat(offsets["best"]), torch.cat(offsets["true"])
        own = (best == 0).all(-1).float().mean()
        right = (best == true).all(-1).float().mean()
        b_abs, t_abs = best.abs().float().mean(0), true.abs().float().mean(0)
        print(f"| {kind} | {len(best)} | {own:.2f} | {right:.2f} "
              f"| {b_abs[0]:.2f}, {b_abs[1]:.2f} | {t_abs[0]:.2f}, {t_abs[1]:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
