"""Is the motion in a trained two-frame model's BEVs? (``velocity_probe`` in
``bevformer/evaluation/temporal.py``.)

    python tools/velocity_probe.py CONFIG CHECKPOINT --data-root DIR [--epochs 30]
        [--seed 0] [--cfg-options key=value ...]

Encodes the past and current BEV of every training and validation keyframe that has its past
frame (eval mode, the test pipeline: no augmentation), then trains the same small
convolutional velocity read-out twice on the frozen training BEVs, once on (past, current) and
once on (current, current), and prints the mean per-box velocity error (m/s) of each on the
training and the validation keyframes, next to velocity 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bevformer.builder import build_dataset
from bevformer.data.collate import collate
from bevformer.engine.launch import add_model_arguments, load_model_for_analysis
from bevformer.evaluation.temporal import probe_samples, velocity_probe


def _batches(dataset, batch_size: int = 2):
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "the dataset (train and val splits)")
    parser.add_argument("--epochs", type=int, default=30, help="probe training epochs")
    parser.add_argument("--seed", type=int, default=0, help="probe initialisation and order")
    args = parser.parse_args(argv)
    cfg, model = load_model_for_analysis(args)
    test_transforms = cfg.test_dataloader.dataset.transforms
    train_cfg = {**cfg.train_dataloader.dataset, "transforms": test_transforms, "test_mode": True}
    splits = {
        "train": build_dataset(train_cfg),
        "val": build_dataset(cfg.val_dataloader.dataset),
    }
    try:
        samples = {name: probe_samples(model, _batches(ds)) for name, ds in splits.items()}
    except ValueError as err:  # not a two-frame fusion config
        raise SystemExit(f"error: {err}") from None
    if not samples["train"] or not samples["val"]:
        raise SystemExit(
            f"error: no keyframe with its past frame and a box in range (train "
            f"{len(samples['train'])}, val {len(samples['val'])}); is this a temporal info file?"
        )
    boxes = {name: sum(len(s.tokens) for s in found) for name, found in samples.items()}
    print(
        f"keyframes with their past frame: train {len(samples['train'])} ({boxes['train']} boxes),"
        f" val {len(samples['val'])} ({boxes['val']} boxes); probe {args.epochs} epochs"
    )
    print("| probe input | train error | val error | val error, boxes > 1 m/s |")
    print("|---|---|---|---|")
    result = {}
    for name, use_past in (("past, current", True), ("current, current", False)):
        result = velocity_probe(
            samples["train"], samples["val"], use_past, epochs=args.epochs, seed=args.seed
        )
        print(
            f"| {name} | {result['train']:.2f} | {result['held_out']:.2f} | "
            f"{result['held_out_moving']:.2f} |"
        )
    print(f"| velocity 0 | | {result['zero']:.2f} | {result['zero_moving']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
