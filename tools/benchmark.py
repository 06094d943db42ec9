"""Benchmarks, one subcommand per area: ``python tools/benchmark.py <subcommand> [options]``.

Subcommands:
    ops     deformable sampling kernels vs the pure-PyTorch references (``ops.benchmark``)

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


SUBCOMMANDS = [add_ops_parser]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="BEVFormer v2 benchmarks")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
