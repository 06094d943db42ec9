"""Per-frame inference latency of one model in three runtimes (``tools/benchmark.py latency``).

For a single-frame config at a stated image size, batch 1, on CPU: the export path
(:class:`~bevformer.deploy.onnx_export.ExportModel`: backbone to top-k boxes) run

- ``eager``: PyTorch, the compiled op kernels (the baseline of the ratios);
- ``compile``: the same module through ``torch.compile`` (default inductor backend; the
  compilation time is reported apart);
- ``onnxruntime``: the file :func:`~bevformer.deploy.onnx_export.export_onnx` writes
  (decomposed operators), CPU execution provider.

The input is a real batch (the config's test pipeline on a small synthetic dataroot, as
``tools/benchmark.py model``). Each runtime gets one warm-up call, then the median of
``repeats`` calls; every row reports its ratio to ``eager`` measured in the same process.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["BACKENDS", "bench_latency", "format_latency_table"]

BACKENDS = ("eager", "compile", "onnxruntime")


def _median_seconds(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_latency(
    config: str = "tiny",
    image_size: tuple[int, int] = (128, 320),
    threads: int = 2,
    repeats: int = 10,
    dataroot: str | os.PathLike | None = None,
    backends: Sequence[str] = BACKENDS,
    cfg_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{backend, seconds, ratio_to_eager}`` (``compile`` adds ``compile_seconds``; a
    runtime that fails gives ``error``). ``config`` is a name of
    :data:`bevformer.benchmark.CONFIGS` or a config path; ``cfg_options`` override its keys
    (``--cfg-options``, e.g. a smaller BEV grid: the decomposed spatial cross-attention of the
    ONNX file samples every cell in every camera, about 8 GB per layer at 200x200)."""
    from bevformer.benchmark import load_config, model_batch, synthetic_dataroot
    from bevformer.builder import build_model
    from bevformer.deploy.onnx_export import ExportModel, export_onnx

    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {list(BACKENDS)}")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(config)
    if cfg_options:  # checked like tools/' --cfg-options: an unknown key is an error
        from bevformer.engine.launch import checked_options

        cfg.merge_from_dict(checked_options(cfg, cfg_options, cfg.filename))
    with tempfile.TemporaryDirectory(prefix="bevformer-latency-") as tmp:
        root = dataroot if dataroot is not None else synthetic_dataroot(Path(tmp) / "data")
        batch = model_batch(cfg, root, tuple(image_size), 1)
        model = build_model(cfg.model).eval()
        wrapped = ExportModel(model)
        inputs = (batch["img"][:, 0], batch["lidar2img"][:, 0])
        rows: list[dict[str, Any]] = []
        for backend in backends:
            row: dict[str, Any] = {"backend": backend}
            try:
                if backend == "eager":
                    row["seconds"] = _time_torch(wrapped, inputs, repeats)
                elif backend == "compile":
                    compiled = torch.compile(wrapped)
                    start = time.perf_counter()
                    _time_torch(compiled, inputs, 0)
                    row["compile_seconds"] = time.perf_counter() - start
                    row["seconds"] = _time_torch(compiled, inputs, repeats)
                else:
                    path = Path(tmp) / "model.onnx"
                    export_onnx(model, path, inputs[0].shape[-2:], num_cams=inputs[0].shape[1])
                    row["seconds"] = _time_onnxruntime(path, inputs, threads, repeats)
            except Exception as err:  # one runtime failing keeps the others' rows
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            rows.append(row)
    eager = next((r.get("seconds") for r in rows if r["backend"] == "eager"), None)
    for row in rows:
        if eager and row.get("seconds"):
            row["ratio_to_eager"] = row["seconds"] / eager
    return rows


def _time_torch(module: Callable, inputs: tuple[torch.Tensor, ...], repeats: int) -> float:
    with torch.no_grad():
        if repeats == 0:
            module(*inputs)
            return 0.0
        return _median_seconds(lambda: module(*inputs), repeats)


def _time_onnxruntime(
    path: Path, inputs: tuple[torch.Tensor, ...], threads: int, repeats: int
) -> float:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"img": inputs[0].numpy(), "lidar2img": inputs[1].numpy()}
    return _median_seconds(lambda: session.run(None, feed), repeats)


def format_latency_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per runtime: median ms per frame, the ratio to eager, the compile time."""
    lines = [f"{'runtime':<12} {'ms/frame':>9} {'x eager':>8}  note"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['backend']:<12} {'-':>9} {'-':>8}  failed: {row['error']}")
            continue
        note = ""
        if "compile_seconds" in row:
            note = f"compilation {row['compile_seconds']:.1f} s (first call)"
        ratio = row.get("ratio_to_eager")
        lines.append(
            f"{row['backend']:<12} {row['seconds'] * 1e3:>9.1f} "
            f"{(f'{ratio:.2f}' if ratio else '-'):>8}  {note}"
        )
    return "\n".join(lines)
