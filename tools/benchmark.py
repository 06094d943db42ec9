"""Benchmarks, one subcommand per area: ``python tools/benchmark.py <subcommand> [options]``.

Subcommands:
    ops     deformable sampling kernels vs the pure-PyTorch references (``ops.benchmark``)
    official-ops
            the CUDA kernels vs the official compiled InternImage DCNv3, Deformable-DETR MSDA
            and DCNv4 kernels, JIT-built from their sources (``ops.benchmark_official``)
    model   tiny / XL model on CPU: latency, training step, peak memory, kernels vs references
            (``bevformer.benchmark``)
    data    samples/s of the training data pipeline with N DataLoader workers vs 0 workers
    latency per-frame inference latency: eager PyTorch, torch.compile, onnxruntime
            (``bevformer.deploy.latency``)

Each subcommand is registered by a ``add_<name>_parser(subparsers)`` function that adds its
parser and sets ``func`` (called with the parsed arguments); add new areas the same way.
"""

from __future__ import annotations

import argparse
import sys


def add_ops_parser(subparsers: argparse._SubParsersAction) -> None:
    from ops.benchmark import SHAPES

    p = subparsers.add_parser("ops", help="deformable sampling kernels vs references")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="subset of shapes")
    p.add_argument("--quick", action="store_true", help="fewer queries and repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")

    def run_ops(args: argparse.Namespace) -> int:
        from ops.benchmark import run

        run(args.shapes, args.threads, args.quick, args.device, args.repeats)
        return 0

    p.set_defaults(func=run_ops)


def add_official_ops_parser(subparsers: argparse._SubParsersAction) -> None:
    from ops.benchmark_official import CASES, DTYPES

    p = subparsers.add_parser(
        "official-ops", help="CUDA kernels vs the official InternImage/Deformable-DETR/DCNv4 ones"
    )
    p.add_argument("--internimage-src", help="InternImage ops_dcnv3 folder (or repository root)")
    p.add_argument("--msda-src", help="Deformable-DETR models/ops folder (or repository root)")
    p.add_argument("--dcnv4-src", help="DCNv4 DCNv4_op folder (or repository root); optional")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"], choices=list(DTYPES))
    p.add_argument("--cases", nargs="+", choices=list(CASES), help="subset of cases")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats (median)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--cache", help="build folder (default: $BEVFORMER_OPS_CACHE/official)")
    p.add_argument("--verbose", action="store_true", help="show the compiler output")
    p.add_argument(
        "--build-only", action="store_true", help="build the official extensions and stop"
    )
    p.add_argument(
        "--compile-check",
        metavar="ARCH",
        help="only compile the official .cu sources with nvcc for ARCH (e.g. sm_90); no GPU needed",
    )

    def run_official(args: argparse.Namespace) -> int:
        from ops import benchmark_official as bo

        given = {"dcnv3": args.internimage_src, "msda": args.msda_src, "dcnv4": args.dcnv4_src}
        sources = {k: v for k, v in given.items() if v}
        if not sources:
            p.error("give at least one of --internimage-src, --msda-src, --dcnv4-src")
        if args.compile_check:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                report = bo.compile_check(sources, args.compile_check, tmp)
            for key, r in report.items():
                status = "compiled" if r["ok"] else "FAILED"
                print(f"{bo.OFFICIAL_OPS[key].project}: {status} for {args.compile_check}")
                for line in r["patches"] + r["errors"]:
                    print(f"  {line}")
            return 0 if all(r["ok"] for r in report.values()) else 1
        if args.build_only:
            for key, src in sources.items():
                module, patches = bo.build_official(
                    bo.OFFICIAL_OPS[key], src, args.cache, args.verbose
                )
                print(f"built {module.__name__} with {len(patches)} source patch(es)")
            return 0
        bo.run(sources, args.dtypes, args.repeats, args.cases, args.out, args.cache, args.verbose)
        return 0

    p.set_defaults(func=run_official)


def _image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x320, got {text!r}") from None
    return h, w


def add_model_parser(subparsers: argparse._SubParsersAction) -> None:
    from bevformer.benchmark import CONFIGS, DEFAULT_IMAGE_SIZES, MODES

    sizes = ", ".join(f"{k} {h}x{w}" for k, (h, w) in DEFAULT_IMAGE_SIZES.items())
    p = subparsers.add_parser(
        "model", help="whole model on CPU: kernels vs reference ops (latency, train step, memory)"
    )
    p.add_argument("--configs", nargs="+", default=["tiny", "xl"], help=f"{sorted(CONFIGS)}")
    p.add_argument(
        "--image-size", type=_image_size, default=None, help=f"HxW for every config ({sizes})"
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after a warm-up")
    p.add_argument(
        "--modes",
        nargs="+",
        default=["forward", "train"],
        choices=list(MODES),
        help="train-bf16: the train step under CPU bfloat16 autocast (tools/train.py --amp)",
    )
    p.add_argument("--dataroot", default=None, help="synthetic dataroot (default: a small new one)")

    def run_model(args: argparse.Namespace) -> int:
        from bevformer.benchmark import bench_model, format_model_table

        sizes = None if args.image_size is None else {c: args.image_size for c in args.configs}
        rows = bench_model(
            args.configs, sizes, args.threads, args.repeats, args.dataroot, args.modes
        )
        print(f"\nCPU, {args.threads} threads, batch 1, median of {args.repeats} after a warm-up.")
        print("forward: eval mode, predict; train: forward + loss + backward + clip + AdamW step.")
        print("peak memory: growth of the peak resident set (VmHWM) over one steady-state call,")
        print("each measurement in a fresh subprocess. Baseline: the compiled op kernels;")
        print("ref = pure-PyTorch reference ops (BEVFORMER_OPS_REFERENCE=1).\n")
        print(format_model_table(rows))
        return 0

    p.set_defaults(func=run_model)


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="samples/s of the training data pipeline vs workers")
    p.add_argument("--dataroot", required=True, help="dataroot with the temporal info files")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts")
    p.add_argument("--config", default="tiny", help="tiny, xl or a config path (pipeline)")
    p.add_argument("--samples", type=int, default=32, help="samples per worker count")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's")

    def run_data(args: argparse.Namespace) -> int:
        from bevformer.benchmark import bench_data, format_data_table

        rows = bench_data(args.dataroot, args.workers, args.config, args.samples, args.batch_size)
        print(f"\n{args.config} training pipeline + collate, DataLoader; first batch not timed.")
        print("Baseline: 0 workers (loading in the main process).\n")
        print(format_data_table(rows))
        return 0

    p.set_defaults(func=run_data)


def add_latency_parser(subparsers: argparse._SubParsersAction) -> None:
    from bevformer.deploy.latency import BACKENDS
    from bevformer.engine.launch import DictAction

    p = subparsers.add_parser(
        "latency", help="per-frame latency: eager PyTorch, torch.compile, onnxruntime (CPU)"
    )
    p.add_argument("--config", default="tiny", help="tiny, xl or a config path (single-frame)")
    p.add_argument("--image-size", type=_image_size, default=(128, 320), help="HxW (128x320)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls after a warm-up")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    p.add_argument("--dataroot", default=None, help="synthetic dataroot (default: a small new one)")
    p.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config keys: key=value"
    )

    def run_latency(args: argparse.Namespace) -> int:
        from bevformer.deploy.latency import bench_latency, format_latency_table

        rows = bench_latency(
            args.config, args.image_size, args.threads, args.repeats, args.dataroot, args.backends,
            args.cfg_options,
        )  # fmt: skip
        h, w = args.image_size
        options = f" with {args.cfg_options}" if args.cfg_options else ""
        print(f"\n{args.config}{options}, images {h}x{w} x 6 cameras, batch 1, CPU, "
              f"{args.threads} threads,")  # fmt: skip
        print(f"fp32, median of {args.repeats} calls after a warm-up; backbone to top-k boxes.")
        print("Baseline: eager PyTorch with the compiled op kernels.\n")
        print(format_latency_table(rows))
        return 0 if all("error" not in r for r in rows) else 1

    p.set_defaults(func=run_latency)


SUBCOMMANDS = [
    add_ops_parser,
    add_official_ops_parser,
    add_model_parser,
    add_data_parser,
    add_latency_parser,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="BEVFormer v2 benchmarks")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
