"""Train a BEVFormer v2 config with mmengine's Runner (one process, or DDP under torchrun).

python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT] | --auto-resume]
                             [--load-from CKPT] [--amp]
                             [--cfg-options key=value ...]
bash tools/dist_train.sh CONFIG NGPUS [same options]
"""

from __future__ import annotations

import argparse

from bevformer.engine.launch import DictAction, build_runner, finish_distributed, load_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file, e.g. projects/configs/bevformerv2/...py")
    parser.add_argument("--work-dir", help="where logs and checkpoints go")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        help="resume from CKPT, or from the latest checkpoint in the work dir when no path",
    )
    parser.add_argument(
        "--load-from",
        help="start a new run from this checkpoint's weights (overrides the config's load_from; "
        "matching names and shapes are loaded, the rest is reported; ignored with --resume)",
    )
    parser.add_argument(
        "--data-root",
        help="use this dataroot instead of the config's data_root (every info file, image and "
        "metric path follows; the same as --cfg-options data_root=DIR)",
    )
    parser.add_argument(
        "--auto-resume",
        dest="resume",
        action="store_const",
        const=True,
        help="the same as --resume without a path (mmdetection's name)",
    )
    parser.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: on CUDA bf16 where supported, else fp16 with dynamic loss "
        "scaling; without CUDA bf16 autocast on the CPU (refused on a CPU without bf16 "
        "instructions)",
    )
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config keys: key=value"
    )
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options, data_root=args.data_root)
    runner = build_runner(
        cfg,
        work_dir=args.work_dir,
        resume=args.resume,
        amp=args.amp,
        launcher=args.launcher,
        load_from=args.load_from,
    )
    try:
        runner.train()
    except KeyboardInterrupt:
        # one line instead of a traceback; the last checkpoint in the work dir is intact
        # (checkpoints are written atomically)
        print(
            f"\ninterrupted at epoch {runner.epoch + 1} iter {runner.iter}; resume with "
            f"--resume (work dir {runner.work_dir})"
        )
        raise SystemExit(130) from None
    finish_distributed()


if __name__ == "__main__":
    main()
