"""Peak memory and time of an InternImage forward+backward with and without checkpointing.

``measure_checkpointing()`` runs each setting in its own Python process (so peak resident
memory, ``ru_maxrss``, belongs to that setting alone) and returns the numbers plus the ratio of
``with_cp=True`` to the ``with_cp=False`` baseline measured in the same call. Default: the
InternImage-XL backbone (stages 2-4 out, as in BEVFormer v2) on one 3x256x704 image, CPU, fp32.

    python -m backbones.benchmark --variant xl --height 256 --width 704
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

__all__ = ["measure_checkpointing"]


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker(variant: str, height: int, width: int, with_cp: bool, core_op: str, device: str):
    import torch

    from backbones.internimage_presets import build_internimage

    torch.manual_seed(0)
    model = build_internimage(
        variant, core_op=core_op, with_cp=with_cp, out_indices=(1, 2, 3), drop_path_rate=0.0
    ).to(device)
    model.train()
    x = torch.randn(1, 3, height, width, device=device)
    rss_model = _peak_rss_mib()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    outs = model(x)
    sum(o.float().mean() for o in outs).backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "with_cp": with_cp,
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "rss_after_build_mib": rss_model,
    }
    if device.startswith("cuda"):
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def measure_checkpointing(
    variant: str = "xl",
    height: int = 256,
    width: int = 704,
    core_op: str = "DCNv3",
    device: str = "cpu",
) -> dict[str, Any]:
    """Forward+backward of one image with ``with_cp`` off (baseline) and on.

    Returns ``{"baseline": {...}, "with_cp": {...}, "peak_rss_ratio": r, "time_ratio": t}``;
    each setting reports seconds, ``peak_rss_mib`` (process peak), ``rss_after_build_mib``
    (after the model was built: parameters and allocator) and, on CUDA, ``cuda_peak_mib``.
    The activation part of the peak is ``peak_rss_mib - rss_after_build_mib``.
    """
    runs = {}
    for with_cp in (False, True):
        cmd = [
            sys.executable, "-m", "backbones.benchmark", "--worker",
            "--variant", variant, "--height", str(height), "--width", str(width),
            "--core-op", core_op, "--device", device,
        ]  # fmt: skip
        if with_cp:
            cmd.append("--with-cp")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark worker failed ({' '.join(cmd)}):\n{proc.stderr}")
        runs[with_cp] = json.loads(proc.stdout.strip().splitlines()[-1])
    base, cp = runs[False], runs[True]
    setting = dict(variant=variant, height=height, width=width, core_op=core_op, device=device)
    out = {
        "setting": setting,
        "baseline": base,
        "with_cp": cp,
        "peak_rss_ratio": cp["peak_rss_mib"] / base["peak_rss_mib"],
        "activation_rss_ratio": (cp["peak_rss_mib"] - cp["rss_after_build_mib"])
        / max(base["peak_rss_mib"] - base["rss_after_build_mib"], 1e-9),
        "time_ratio": cp["seconds"] / base["seconds"],
    }
    if "cuda_peak_mib" in base:
        out["cuda_peak_ratio"] = cp["cuda_peak_mib"] / base["cuda_peak_mib"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="xl")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=704)
    parser.add_argument("--core-op", default="DCNv3", choices=("DCNv3", "DCNv3_pytorch"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--with-cp", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.variant, args.height, args.width, args.with_cp, args.core_op, args.device)
        return
    result = measure_checkpointing(args.variant, args.height, args.width, args.core_op, args.device)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
