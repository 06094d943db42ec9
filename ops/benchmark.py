"""Benchmark of the deformable sampling kernels against the grid_sample references.

Measures, in one run and at the model's real shapes, forward and forward+backward wall time and
peak memory of the compiled kernel and of the pure-PyTorch reference, and the kernel forward's
achieved memory throughput against the machine's measured copy bandwidth. Used by
``tools/benchmark.py ops``.

Peak memory (CPU) is the growth of the process's peak resident set (VmHWM, reset through
``/proc/self/clear_refs`` before each measurement) over the resident set just before the call,
with glibc's mmap threshold pinned so that freed tensors return to the OS. Inputs are not
counted; outputs, saved tensors, temporaries and gradients are. On CUDA the allocator's peak is
used instead.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ops.dcnv3 import dcnv3_core
from ops.ms_deform_attn import ms_deform_attn
from ops.reference import dcnv3_core_reference, dcnv3_output_size, ms_deform_attn_reference

__all__ = ["SHAPES", "Case", "bench_case", "copy_bandwidth", "run"]

# FPN levels of a 1600x640 image at strides 8, 16, 32, 64: (h, w).
FPN_1600x640 = ((80, 200), (40, 100), (20, 50), (10, 25))


@dataclass(frozen=True)
class Case:
    """One benchmark shape; ``make`` returns (kernel fn, reference fn, inputs needing grad)."""

    name: str
    op: str
    description: str
    make: Callable[[torch.device, bool], tuple[Callable, Callable, list[Tensor], int, int]]


def _dcnv3_case(N, H, W, C, G, offset_scale, device, quick):
    # InternImage calls DCNv3 with a 3x3 kernel, stride 1, pad 1, dilation 1 (classification/
    # models/intern_image.py) on the NHWC feature map.
    Cg = C // G
    Ho, Wo = dcnv3_output_size(H, 3, 1, 1, 1), dcnv3_output_size(W, 3, 1, 1, 1)
    x = torch.randn(N, H, W, C, device=device)
    offset = torch.randn(N, Ho, Wo, G * 9 * 2, device=device)
    mask = torch.randn(N, Ho, Wo, G, 9, device=device).softmax(-1).flatten(-2)
    params = (3, 3, 1, 1, 1, 1, 1, 1, G, Cg, offset_scale, 256)

    def kernel(a, b, c):
        return dcnv3_core(a, b, c, *params)

    def reference(a, b, c):
        return dcnv3_core_reference(a, b, c, *params)

    # Compulsory traffic: read input, offset, mask once, write the output once.
    fwd_bytes = (x.numel() + offset.numel() + mask.numel() + N * Ho * Wo * C) * 4
    # Gathered bytes: 4 corners x Cg channels per sampling point.
    gather_bytes = N * Ho * Wo * G * 9 * 4 * Cg * 4
    return kernel, reference, [x, offset, mask], fwd_bytes, gather_bytes


def _msda_case(B, levels, Q, H, C, P, device, quick, ordered=True):
    """Locations: each query has a reference point (on a raster over the map when ``ordered``,
    as BEV queries projected into a camera; uniformly random otherwise, as object queries) and
    its points scatter around it with a standard deviation of 3% of the map size."""
    spatial = torch.tensor(levels, dtype=torch.int64, device=device)
    starts = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    S, L = int(spatial.prod(1).sum()), len(levels)
    value = torch.randn(B, S, H, C, device=device)
    if ordered:
        side = int(Q**0.5) + 1
        idx = torch.arange(Q, device=device)
        ref = torch.stack([(idx % side + 0.5) / side, (idx // side + 0.5) / side], -1)
    else:
        ref = torch.rand(Q, 2, device=device)
    loc = ref[None, :, None, None, None, :] + 0.03 * torch.randn(B, Q, H, L, P, 2, device=device)
    weights = torch.rand(B, Q, H, L, P, device=device).flatten(-2).softmax(-1).view(B, Q, H, L, P)

    def kernel(v, lc, w):
        return ms_deform_attn(v, spatial, starts, lc, w)

    def reference(v, lc, w):
        return ms_deform_attn_reference(v, spatial, starts, lc, w)

    fwd_bytes = (value.numel() + loc.numel() + weights.numel() + B * Q * H * C) * 4
    gather_bytes = B * Q * H * L * P * 4 * C * 4
    return kernel, reference, [value, loc, weights], fwd_bytes, gather_bytes


def _bev_queries(quick: bool) -> int:
    # Queries per camera: 200x200 BEV / 16 (2500) by default, / 64 with --quick.
    return 200 * 200 // (64 if quick else 16)


SHAPES: dict[str, Case] = {
    case.name: case
    for case in (
        Case(
            "internimage_t_stage1",
            "dcnv3",
            "DCNv3, InternImage-T stage 1 at 1600x640: 1x160x400, C=64, G=4, Cg=16, K=9",
            lambda dev, quick: _dcnv3_case(1, 160, 400, 64, 4, 1.0, dev, quick),
        ),
        Case(
            "internimage_xl_stage3",
            "dcnv3",
            "DCNv3, InternImage-XL stage 3 at 1600x640: 1x40x100, C=768, G=48, Cg=16, scale 2",
            lambda dev, quick: _dcnv3_case(1, 40, 100, 768, 48, 2.0, dev, quick),
        ),
        Case(
            "spatial_cross_attn",
            "ms_deform_attn",
            "BEV spatial cross-attention: 6 cams x Q, 4 FPN levels of 1600x640, 8 heads x 32 ch, "
            "8 points; Q = 200x200/16 per camera (/64 with --quick), points around reference "
            "points on a raster",
            lambda dev, quick: _msda_case(
                6, FPN_1600x640, _bev_queries(quick), 8, 32, 8, dev, quick
            ),
        ),
        Case(
            "decoder_cross_attn",
            "ms_deform_attn",
            "Decoder cross-attention: 900 queries, 1 level 200x200 BEV, 8 heads x 32 ch, 4 points "
            "around random reference points",
            lambda dev, quick: _msda_case(1, ((200, 200),), 900, 8, 32, 4, dev, quick, False),
        ),
    )
}


# ------------------------------------------------------------------------------ memory meter


def _set_malloc(mmap_threshold: int) -> None:
    """Set glibc's mmap threshold and return freed heap memory to the OS.

    Memory is measured with a 128 KiB threshold (freed tensors leave the resident set, so the
    peak counts only live memory); timings use 64 MiB, close to glibc's adaptive default, so
    that repeated allocations of the same size are reused as in a training loop.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory growth of a block of code, in bytes (CPU: VmHWM; CUDA: allocator peak)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _status_kib("VmHWM") * 1024 - self.base
        return False


# ---------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _run_once(fn: Callable, inputs: list[Tensor], backward: bool) -> None:
    if backward:
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
        del leaves, out
    else:
        with torch.no_grad():
            out = fn(*inputs)
        del out


def measure(fn: Callable, inputs: list[Tensor], backward: bool, repeats: int,
            device: torch.device) -> tuple[float, float, int]:  # fmt: skip
    """(median wall seconds, median process CPU seconds, peak bytes) of fn on inputs, forward
    only or forward + backward. CPU time (all threads) is less sensitive to other processes
    competing for the cores than wall time."""
    _run_once(fn, inputs, backward)  # warm-up (and JIT build of the extension)
    _set_malloc(128 * 1024)
    with PeakMemory(device) as mem:
        _run_once(fn, inputs, backward)
    _set_malloc(64 * 2**20)
    _run_once(fn, inputs, backward)
    times, cpu_times = [], []
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        _run_once(fn, inputs, backward)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu_times), mem.peak


def copy_bandwidth(device: torch.device, mib: int = 512, repeats: int = 5) -> float:
    """Measured memory bandwidth in bytes/s: best of ``repeats`` copies of a ``mib`` MiB tensor
    (counting the read and the write)."""
    src = torch.randn(mib * 1024 * 1024 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


@dataclass
class Result:
    case: str
    mode: str
    kernel_s: float
    reference_s: float
    kernel_cpu_s: float
    reference_cpu_s: float
    kernel_bytes: int
    reference_bytes: int


def bench_case(
    case: Case, device: torch.device, quick: bool, repeats: int
) -> tuple[list[Result], float, int, int]:
    """Results for forward and forward+backward, and (kernel forward seconds, traffic bytes)."""
    kernel, reference, inputs, fwd_bytes, gather_bytes = case.make(device, quick)
    results = []
    kernel_fwd = 0.0
    for mode, backward in (("fwd", False), ("fwd+bwd", True)):
        k_s, k_cpu, k_mem = measure(kernel, inputs, backward, repeats, device)
        r_s, r_cpu, r_mem = measure(reference, inputs, backward, max(1, repeats // 2), device)
        results.append(Result(case.name, mode, k_s, r_s, k_cpu, r_cpu, k_mem, r_mem))
        if not backward:
            kernel_fwd = k_s
    return results, kernel_fwd, fwd_bytes, gather_bytes


def _mib(b: int) -> str:
    return f"{b / 2**20:8.1f}"


def run(shapes: list[str] | None = None, threads: int = 2, quick: bool = False,
        device: str = "cpu", repeats: int | None = None) -> list[Result]:  # fmt: skip
    """Run the benchmark and print the tables; returns the timing results."""
    from ops.build import load_extension

    torch.set_num_threads(threads)
    dev = torch.device(device)
    if load_extension() is None:
        raise SystemExit("the compiled extension is not available; nothing to compare")
    repeats = repeats or (2 if quick else 5)
    names = shapes or list(SHAPES)
    bandwidth = copy_bandwidth(dev, mib=128 if quick else 512)
    print(f"device: {device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"measured copy bandwidth: {bandwidth / 1e9:.2f} GB/s (read + write of a large tensor)")
    print("peak memory: growth of the peak resident set over the inputs (VmHWM), MiB\n")
    print("time: median wall time; cpu x: the same ratio for process CPU time (all threads)")
    header = (
        f"{'shape':24s} {'mode':8s} {'kernel ms':>10s} {'ref ms':>10s} {'speedup':>8s} "
        f"{'cpu x':>6s} {'kernel MiB':>10s} {'ref MiB':>10s} {'mem ratio':>9s}"
    )
    print(header)
    print("-" * len(header))
    all_results, traffic = [], []
    for name in names:
        case = SHAPES[name]
        results, k_fwd, fwd_bytes, gather_bytes = bench_case(case, dev, quick, repeats)
        for r in results:
            mem_ratio = r.reference_bytes / max(r.kernel_bytes, 1)
            print(
                f"{r.case:24s} {r.mode:8s} {r.kernel_s * 1e3:10.2f} {r.reference_s * 1e3:10.2f} "
                f"{r.reference_s / r.kernel_s:7.1f}x "
                f"{r.reference_cpu_s / max(r.kernel_cpu_s, 1e-9):5.1f}x "
                f"{_mib(r.kernel_bytes):>10s} "
                f"{_mib(r.reference_bytes):>10s} {mem_ratio:8.1f}x"
            )
        all_results += results
        traffic.append((name, k_fwd, fwd_bytes, gather_bytes))
    print("\nkernel forward throughput (compulsory = inputs read once + output written once;")
    print("gathered = 4 bilinear corners x channels per sampling point, mostly from cache)")
    for name, k_fwd, fwd_bytes, gather_bytes in traffic:
        print(
            f"{name:24s} compulsory {fwd_bytes / k_fwd / 1e9:7.2f} GB/s "
            f"({100 * fwd_bytes / k_fwd / bandwidth:5.1f}% of copy bw), gathered "
            f"{gather_bytes / k_fwd / 1e9:7.2f} GB/s "
            f"({100 * gather_bytes / k_fwd / bandwidth:5.1f}%)"
        )
    for name in names:
        print(f"  {name}: {SHAPES[name].description}")
    return all_results
