"""Train a BEVFormer v2 config with mmengine's Runner (one process, or DDP under torchrun).

python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
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
    parser.add_argument("--data-root", help="use this dataroot instead of the config's data_root")
    parser.add_argument("--amp", action="store_true", help="mixed precision (bf16 or fp16)")
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
        cfg, work_dir=args.work_dir, resume=args.resume, amp=args.amp, launcher=args.launcher
    )
    runner.train()
    finish_distributed()


if __name__ == "__main__":
    main()
