"""Whole-model and data-pipeline benchmarks (``tools/benchmark.py model`` and ``data``).

Model: for a config (``tiny`` or ``xl``) at a stated image size and batch 1, on CPU, measures
the parameter count, the forward latency (eval mode, ``mode="predict"``), the training step
time (train mode: forward + loss + backward + gradient clipping + AdamW step; ``train-bf16``:
the same with the forward pass and losses under CPU bfloat16 autocast, as ``tools/train.py
--amp`` on a CPU) and the peak memory of each, once with the compiled op kernels and once
with the pure-PyTorch reference ops (``BEVFORMER_OPS_REFERENCE=1``). Every measurement runs in
a fresh subprocess, so the two op implementations never share a process and each peak is its
own.

Peak memory is the growth of the process's peak resident set (VmHWM, reset through
``/proc/self/clear_refs``; :class:`ops.benchmark.PeakMemory`) over the resident set just before
one steady-state call (model, batch and, for training, the AdamW state already allocated).

The batch is a real one: the config's dataset on a small synthetic dataroot (generated into a
temporary folder unless one is given), the test pipeline with ``CropResizeFlipImage`` set to
the benchmark's image size, collated as in training (layout: ``docs/CONVENTIONS.md``).

Data: samples/s of the config's training dataset (train pipeline) + ``collate`` through a
``torch.utils.data.DataLoader`` with N workers, the first batch (worker start-up) excluded.

Every table prints the ratio to a named baseline measured in the same run: reference ops vs
kernels for the model (and, for ``train-bf16``, float32 ``train`` / bfloat16 with the kernels),
0 workers for the data pipeline.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

__all__ = [
    "CONFIGS",
    "DEFAULT_IMAGE_SIZES",
    "bench_data",
    "bench_model",
    "benchmark_dataset",
    "format_data_table",
    "format_model_table",
    "load_config",
    "measure_model",
    "model_batch",
    "synthetic_dataroot",
]

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "projects" / "configs" / "bevformerv2"
CONFIGS = {
    "tiny": CONFIG_DIR / "bevformerv2_tiny_320x128_t1_12ep.py",
    "tiny-hybrid": CONFIG_DIR / "bevformerv2_tiny_320x128_t1-hybrid_12ep.py",  # make recipe
    "xl": CONFIG_DIR / "bevformerv2_internimage-xl_1600x640_t1_24ep.py",
}
# (H, W) of the model input. The XL config trains at 640 x 1600; its CPU benchmark runs at a
# fifth of each side so that one run takes minutes (the BEV grid, 200 x 200, and the 900 x 11
# queries stay at the official sizes).
DEFAULT_IMAGE_SIZES = {"tiny": (128, 320), "tiny-hybrid": (128, 320), "xl": (128, 320)}
MODES = ("forward", "train", "train-bf16")


def load_config(name: str) -> Config:
    """The config ``name`` (a key of ``CONFIGS`` or a path to a config file)."""
    path = CONFIGS.get(name, Path(name))
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"config {name!r} not found: expected one of {sorted(CONFIGS)} or a config file path"
        )
    return Config.fromfile(str(path))


def synthetic_dataroot(
    out_dir: str | os.PathLike,
    scenes: int = 2,
    samples_per_scene: int = 4,
    image_size: tuple[int, int] = (400, 225),
    seed: int = 0,
) -> Path:
    """Generates a small synthetic dataroot (``image_size`` = (W, H)) and its info files."""
    from bevformer.data.infos import create_infos
    from bevformer.data.synthetic import generate

    root = generate(
        out_dir,
        scenes=scenes,
        samples_per_scene=samples_per_scene,
        image_size=image_size,
        seed=seed,
        overwrite=True,
        progress=False,
    )
    create_infos(str(root), "v1.0-mini", progress=False)
    return Path(root)


def _resized(pipeline: Sequence[dict], image_size: tuple[int, int] | None) -> list[dict]:
    steps = [dict(copy.deepcopy(step)) for step in pipeline]
    if image_size is not None:
        for step in steps:
            if step["type"] == "CropResizeFlipImage":
                step["final_size"] = tuple(image_size)
    return steps


def benchmark_dataset(
    cfg: Config,
    dataroot: str | os.PathLike,
    split: str = "train",
    image_size: tuple[int, int] | None = None,
    train_pipeline: bool = True,
    prefix: str = "nuscenes",
):
    """The config's training dataset on ``dataroot``'s ``split`` info file.

    ``train_pipeline=False`` swaps in the test pipeline (no random augmentation) while keeping
    the ground truth; ``image_size`` = (H, W) replaces ``CropResizeFlipImage.final_size``. Mono
    targets are loaded when the model has a perspective head.
    """
    from bevformer.builder import build_dataset

    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset.to_dict())
    pipeline = ds_cfg["transforms"] if train_pipeline else cfg.test_dataloader.dataset.transforms
    ds_cfg["transforms"] = _resized(pipeline, image_size)
    ds_cfg["info_file"] = f"{prefix}_infos_temporal_{split}.json"  # relative to data_root
    ds_cfg["data_root"] = str(dataroot)
    ds_cfg["with_mono"] = cfg.model.get("perspective") is not None
    return build_dataset(ds_cfg)


def model_batch(
    cfg: Config, dataroot: str | os.PathLike, image_size: tuple[int, int], batch_size: int = 1
) -> dict[str, Any]:
    """One collated batch of the first ``batch_size`` training samples at ``image_size``."""
    from bevformer.data.collate import collate

    dataset = benchmark_dataset(cfg, dataroot, image_size=image_size, train_pipeline=False)
    return collate([dataset[i % len(dataset)] for i in range(batch_size)])


# ------------------------------------------------------------------------------ model worker


def _training_step(model, optimizer, batch: dict, max_norm: float, bfloat16: bool = False) -> None:
    from bevformer.engine.amp import cpu_bfloat16_autocast

    optimizer.zero_grad(set_to_none=True)
    with cpu_bfloat16_autocast() if bfloat16 else contextlib.nullcontext():
        losses = model(**batch, mode="loss")
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()


def _measure_here(spec: dict) -> dict:
    """Runs one measurement in this process (called in the subprocess)."""
    from bevformer.builder import build_model
    from ops.benchmark import PeakMemory, _set_malloc

    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    cfg = load_config(spec["config"])
    batch = model_batch(cfg, spec["dataroot"], tuple(spec["image_size"]), int(spec["batch_size"]))
    model = build_model(cfg.model)
    params = count_parameters(model)
    cpu = torch.device("cpu")
    if spec["mode"] == "forward":
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model(**batch, mode="predict")

    else:
        model.train()
        optim = cfg.optim_wrapper.optimizer
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay
        )
        max_norm = float(cfg.optim_wrapper.get("clip_grad", {}).get("max_norm", 35.0))

        bfloat16 = spec["mode"] == "train-bf16"

        def step() -> None:
            _training_step(model, optimizer, batch, max_norm, bfloat16)

    step()  # warm-up: lazy initialisation, optimizer state
    _set_malloc(128 * 1024)
    with PeakMemory(cpu) as mem:
        step()
    _set_malloc(64 * 1024 * 1024)
    times = []
    for _ in range(int(spec["repeats"])):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    from ops.build import use_reference

    return {
        **spec,
        "params": params,
        "seconds": statistics.median(times),
        "peak_bytes": mem.peak,
        "img_shape": list(batch["img"].shape),
        "ops": "reference" if use_reference() else "kernel",
    }


def measure_model(
    config: str,
    mode: str,
    reference: bool,
    image_size: tuple[int, int],
    dataroot: str | os.PathLike,
    threads: int = 2,
    repeats: int = 3,
    batch_size: int = 1,
    timeout: float | None = None,
) -> dict:
    """One model measurement (``mode`` one of :data:`MODES`) in a fresh subprocess.

    Returns the spec plus ``params``, ``seconds`` (median of ``repeats`` after one warm-up),
    ``peak_bytes`` and ``ops`` ("kernel" or "reference", as the subprocess saw it).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    spec = {
        "config": config,
        "mode": mode,
        "image_size": list(image_size),
        "dataroot": str(dataroot),
        "threads": threads,
        "repeats": repeats,
        "batch_size": batch_size,
    }
    env = dict(os.environ, BEVFORMER_OPS_REFERENCE="1" if reference else "0")
    env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, "-m", "bevformer.benchmark", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"the {config} {mode} measurement (reference ops: {reference}) failed with exit code "
            f"{proc.returncode}; its stderr ends with:\n{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_model(
    configs: Sequence[str] = ("tiny", "xl"),
    image_sizes: dict[str, tuple[int, int]] | None = None,
    threads: int = 2,
    repeats: int = 3,
    dataroot: str | os.PathLike | None = None,
    modes: Sequence[str] = ("forward", "train"),
    progress: bool = True,
) -> list[dict]:
    """Rows ``{config, mode, image_size, params, kernel, reference}`` (the two measurements).

    Without ``dataroot`` a small synthetic one is generated in a temporary folder.
    """
    sizes = {**DEFAULT_IMAGE_SIZES, **(image_sizes or {})}
    with tempfile.TemporaryDirectory(prefix="bevformer-bench-") as tmp:
        root = dataroot if dataroot is not None else synthetic_dataroot(Path(tmp) / "data")
        rows = []
        for config in configs:
            size = tuple(sizes.get(config, DEFAULT_IMAGE_SIZES["tiny"]))
            for mode in modes:
                row: dict[str, Any] = {"config": config, "mode": mode, "image_size": size}
                for ops_name, reference in (("kernel", False), ("reference", True)):
                    try:
                        result = measure_model(
                            config, mode, reference, size, root, threads, repeats
                        )
                    except RuntimeError as err:  # e.g. killed for memory: keep the others
                        result = {"error": str(err).splitlines()[0]}
                    row[ops_name] = result
                    row.setdefault("params", result.get("params"))
                    if progress:
                        done = result.get("error") or (
                            f"{result['seconds']:.3f} s, peak {_mib(result['peak_bytes'])} MiB"
                        )
                        print(f"  {config} {mode} ({ops_name} ops): {done}", flush=True)
                rows.append(row)
    return rows


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def format_model_table(rows: Sequence[dict]) -> str:
    """The model table: absolute values of the kernel run, then reference / kernel ratios."""
    head = (
        f"{'config':<6} {'image HxW':>9} {'params':>8} {'mode':<8} "
        f"{'kernel s':>9} {'ref s':>9} {'ref/kernel':>10} "
        f"{'kernel MiB':>10} {'ref MiB':>8} {'mem ref/kernel':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        k, ref = r["kernel"], r["reference"]
        h, w = r["image_size"]
        params = f"{r['params'] / 1e6:>7.1f}M" if r.get("params") else f"{'n/a':>8}"
        cells = [f"{r['config']:<6} {f'{h}x{w}':>9} {params} {r['mode']:<8}"]
        if "error" in k or "error" in ref:  # a failed measurement (its message is printed)
            cells += [f"{_value(k, 'seconds', '.3f'):>9}", f"{_value(ref, 'seconds', '.3f'):>9}"]
            cells += [f"{'n/a':>10}", f"{_value(k, 'peak_bytes', 'mib'):>10}"]
            cells += [f"{_value(ref, 'peak_bytes', 'mib'):>8}", f"{'n/a':>14}"]
        else:
            cells += [
                f"{k['seconds']:>9.3f} {ref['seconds']:>9.3f}",
                f"{ref['seconds'] / k['seconds']:>9.2f}x",
                f"{_mib(k['peak_bytes']):>10} {_mib(ref['peak_bytes']):>8}",
                f"{ref['peak_bytes'] / max(k['peak_bytes'], 1):>13.2f}x",
            ]
        lines.append(" ".join(cells))
    lines += _bfloat16_ratios(rows)
    return "\n".join(lines)


def _bfloat16_ratios(rows: Sequence[dict]) -> list[str]:
    """One line per config measured in both ``train`` and ``train-bf16`` (kernels): the
    float32 step time over the bfloat16 one, measured in the same run."""
    seconds = {
        (r["config"], r["mode"]): r["kernel"]["seconds"] for r in rows if "seconds" in r["kernel"]
    }
    lines = []
    for (config, mode), bf16 in seconds.items():
        fp32 = seconds.get((config, "train"))
        if mode == "train-bf16" and fp32 is not None:
            lines.append(
                f"{config}: train step float32 / bfloat16 autocast (kernels) = {fp32 / bf16:.2f}x"
            )
    return ([""] if lines else []) + lines


def _value(result: dict, key: str, fmt: str) -> str:
    if key not in result:
        return "failed"
    return _mib(result[key]) if fmt == "mib" else format(result[key], fmt)


# ------------------------------------------------------------------------------------- data


def bench_data(
    dataroot: str | os.PathLike,
    workers: Sequence[int] = (0, 1, 2),
    config: str = "tiny",
    samples: int = 32,
    batch_size: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Samples/s of the training pipeline + collate per worker count.

    Rows ``{workers, samples, seconds, samples_per_s, ratio}``, ``ratio`` against the first
    worker count (0 workers by default; measured first when missing). ``samples`` samples are
    drawn in dataset order (wrapping around); the first batch, which pays for the worker
    start-up, is not timed.
    """
    from torch.utils.data import DataLoader

    from bevformer.data.collate import collate

    cfg = load_config(config)
    dataset = benchmark_dataset(cfg, dataroot)
    dataset.set_seed(seed)
    bs = int(batch_size or cfg.train_dataloader.batch_size)
    if samples < 2 * bs:
        raise ValueError(
            f"samples must be at least two batches ({2 * bs}) because the first batch is not "
            f"timed; got {samples}"
        )
    order = [i % len(dataset) for i in range(samples)]
    counts = list(workers) if 0 in workers else [0, *workers]
    rows = []
    for n in counts:
        loader = DataLoader(
            dataset, batch_size=bs, sampler=order, num_workers=n, collate_fn=collate
        )
        it = iter(loader)
        first = next(it)
        timed = 0
        start = time.perf_counter()
        for batch in it:
            timed += batch["img"].shape[0]
        seconds = time.perf_counter() - start
        del first, it
        rows.append({"workers": n, "samples": timed, "seconds": seconds})
    base = next(r for r in rows if r["workers"] == counts[0])
    for r in rows:
        r["samples_per_s"] = r["samples"] / r["seconds"]
        r["ratio"] = r["samples_per_s"] / (base["samples"] / base["seconds"])
    return rows


def format_data_table(rows: Sequence[dict], baseline: int = 0) -> str:
    """The data table with the ratio column ``vs {baseline} workers``."""
    ratio = f"vs {baseline} workers"
    head = f"{'workers':>7} {'samples':>7} {'seconds':>8} {'samples/s':>10} {ratio:>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['workers']:>7} {r['samples']:>7} {r['seconds']:>8.2f} "
            f"{r['samples_per_s']:>10.2f} {r['ratio']:>13.2f}x"
        )
    return "\n".join(lines)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":  # the measurement subprocess of ``measure_model``
    print(json.dumps(_measure_here(json.loads(sys.argv[1]))))
