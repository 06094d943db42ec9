"""Benchmark of the deformable sampling kernels against the grid_sample references.

Measures, in one run and at the model's real shapes, forward and forward+backward wall time and
peak memory of the compiled kernel and of the pure-PyTorch reference, and the kernel's achieved
memory throughput, forward and backward, against the machine's measured copy bandwidth (and,
where ``perf`` can count instructions, the kernel's instructions per sampling point). Used by
``tools/benchmark.py ops``.

Peak memory (CPU) is the growth of the process's peak resident set (VmHWM, reset through
``/proc/self/clear_refs`` before each measurement) over the resident set just before the call,
with glibc's mmap threshold pinned so that freed tensors return to the OS. Inputs are not
counted; outputs, saved tensors, temporaries and gradients are. On CUDA the allocator's peak is
used instead.

Bytes counted for the throughput (float32, 4 bytes per element):
    compulsory forward   the inputs read once and the output written once;
    compulsory backward  the inputs and grad_output read once, the three gradients written
                         once;
    gathered forward     four bilinear corner rows (C channels) read per sampling point;
    gathered backward    four corner rows read and four gradient rows read and written per
                         sampling point (mostly cache hits: can exceed the copy bandwidth).
The backward time is that of ``out.backward()`` alone, measured inside the forward+backward
runs.
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ops.dcnv3 import dcnv3_core
from ops.ms_deform_attn import ms_deform_attn
from ops.reference import dcnv3_core_reference, dcnv3_output_size, ms_deform_attn_reference

__all__ = ["SHAPES", "Case", "Traffic", "bench_case", "copy_bandwidth", "perf_instructions", "run"]

# FPN levels of a 1600x640 image at strides 8, 16, 32, 64: (h, w).
FPN_1600x640 = ((80, 200), (40, 100), (20, 50), (10, 25))


@dataclass(frozen=True)
class Traffic:
    """Bytes and sampling points of one call (see the module docstring for what is counted)."""

    points: int
    forward_bytes: int
    backward_bytes: int
    gather_forward_bytes: int
    gather_backward_bytes: int


def _traffic(inputs: list[Tensor], out_numel: int, points: int, channels: int) -> Traffic:
    item = inputs[0].element_size()
    in_bytes = sum(t.numel() for t in inputs) * item
    row = channels * item  # one corner row
    return Traffic(
        points=points,
        forward_bytes=in_bytes + out_numel * item,
        backward_bytes=2 * in_bytes + out_numel * item,
        gather_forward_bytes=points * 4 * row,
        gather_backward_bytes=points * 4 * row * 3,
    )


@dataclass(frozen=True)
class Case:
    """One benchmark shape; ``make`` returns (kernel fn, reference fn, inputs needing grad,
    traffic of one call)."""

    name: str
    op: str
    description: str
    make: Callable[[torch.device, bool], tuple[Callable, Callable, list[Tensor], Traffic]]


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

    inputs = [x, offset, mask]
    return kernel, reference, inputs, _traffic(inputs, N * Ho * Wo * C, mask.numel(), Cg)


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

    inputs = [value, loc, weights]
    return kernel, reference, inputs, _traffic(inputs, B * Q * H * C, weights.numel(), C)


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


def _run_once(fn: Callable, inputs: list[Tensor], backward: bool,
              device: torch.device | None = None) -> float:  # fmt: skip
    """One forward (no_grad) or forward + backward; returns the seconds of the backward alone
    (0 for a forward)."""
    if not backward:
        with torch.no_grad():
            out = fn(*inputs)
        del out
        return 0.0
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    grad = torch.ones_like(out)
    if device is not None:
        _sync(device)
    t0 = time.perf_counter()
    out.backward(grad)
    if device is not None:
        _sync(device)
    seconds = time.perf_counter() - t0
    del leaves, out, grad
    return seconds


@dataclass
class Timing:
    """Medians over the repeats: wall and process CPU seconds, backward-only wall seconds
    (forward+backward runs), and the peak memory growth in bytes."""

    wall: float
    cpu: float
    backward: float
    peak: int


def measure(fn: Callable, inputs: list[Tensor], backward: bool, repeats: int,
            device: torch.device) -> Timing:  # fmt: skip
    """Times fn on inputs, forward only or forward + backward. CPU time (all threads) is less
    sensitive to other processes competing for the cores than wall time."""
    _run_once(fn, inputs, backward)  # warm-up (and JIT build of the extension)
    _set_malloc(128 * 1024)
    with PeakMemory(device) as mem:
        _run_once(fn, inputs, backward)
    _set_malloc(64 * 2**20)
    _run_once(fn, inputs, backward)
    times, cpu_times, backward_times = [], [], []
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        backward_times.append(_run_once(fn, inputs, backward, device))
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    median = statistics.median
    return Timing(median(times), median(cpu_times), median(backward_times), mem.peak)


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


def perf_instructions(fn: Callable[[], object], calls: int = 2) -> tuple[float | None, str]:
    """User-space instructions that ``calls`` calls of fn execute, counted by ``perf stat``
    attached to this process (all its threads), and a note; (None, reason) where perf is
    missing, not permitted or has no hardware counters (most VMs)."""
    perf = shutil.which("perf")
    if perf is None:
        return None, "perf not found on PATH"
    cmd = [perf, "stat", "-x", ",", "-e", "instructions:u", "-p", str(os.getpid())]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as err:
        return None, f"perf could not start ({err})"
    time.sleep(0.5)  # let perf attach before the counted calls
    if proc.poll() is not None:  # exited at once: not permitted (perf_event_paranoid) or broken
        err = proc.stderr.read().strip().splitlines()
        return None, "perf stat failed: " + (err[-1] if err else f"exit code {proc.returncode}")
    for _ in range(calls):
        fn()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, "perf stat did not stop"
    return parse_perf_instructions(err)


def parse_perf_instructions(text: str) -> tuple[float | None, str]:
    """The instruction count of ``perf stat -x ,`` output, or (None, reason)."""
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) >= 3 and fields[2].startswith("instructions"):
            value = fields[0].strip()
            if value.replace(".", "", 1).isdigit():
                return float(value), "perf stat -e instructions:u"
            return None, f"perf reports the instructions counter as {value} (no hardware counters)"
    return None, "perf printed no instruction count"


@dataclass
class Result:
    """Kernel and reference timings of one shape and mode ("fwd" or "fwd+bwd")."""

    case: str
    mode: str
    kernel: Timing
    reference: Timing


def bench_case(
    case: Case, device: torch.device, quick: bool, repeats: int
) -> tuple[list[Result], Traffic, tuple[Callable, Callable]]:
    """Results for forward and forward+backward, the traffic of one call and the kernel's
    forward and forward+backward as argument-less callables (for counting instructions)."""
    kernel, reference, inputs, traffic = case.make(device, quick)
    results = []
    for mode, backward in (("fwd", False), ("fwd+bwd", True)):
        k = measure(kernel, inputs, backward, repeats, device)
        r = measure(reference, inputs, backward, max(1, repeats // 2), device)
        results.append(Result(case.name, mode, k, r))
    calls = (
        lambda: _run_once(kernel, inputs, False),
        lambda: _run_once(kernel, inputs, True),
    )
    return results, traffic, calls


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
    all_results, rows = [], []
    for name in names:
        case = SHAPES[name]
        results, traffic, calls = bench_case(case, dev, quick, repeats)
        for r in results:
            k, ref = r.kernel, r.reference
            print(
                f"{r.case:24s} {r.mode:8s} {k.wall * 1e3:10.2f} {ref.wall * 1e3:10.2f} "
                f"{ref.wall / k.wall:7.1f}x {ref.cpu / max(k.cpu, 1e-9):5.1f}x "
                f"{_mib(k.peak):>10s} {_mib(ref.peak):>10s} {ref.peak / max(k.peak, 1):8.1f}x"
            )
        all_results += results
        rows.append((name, results, traffic, calls))
    _print_throughput(rows, bandwidth, dev)
    for name in names:
        print(f"  {name}: {SHAPES[name].description}")
    return all_results


def _print_throughput(rows, bandwidth: float, device: torch.device) -> None:
    print("\nkernel throughput against the copy bandwidth (compulsory: inputs, output, grad_output")
    print("and gradients read or written once; gathered: 4 corner rows per sampling point, read")
    print("(fwd) / read + gradient read-modify-write (bwd), mostly from cache); bwd time is")
    print("out.backward() alone")
    header = (
        f"{'shape':24s} {'pass':4s} {'ms':>8s} {'compulsory GB/s':>16s} {'% copy':>7s} "
        f"{'gathered GB/s':>14s} {'% copy':>7s} {'instr/point':>11s}"
    )
    print(header)
    print("-" * len(header))
    notes = set()
    for name, results, traffic, (forward, step) in rows:
        fwd_s, bwd_s = results[0].kernel.wall, results[1].kernel.backward
        instructions = {"fwd": None, "bwd": None}
        if device.type == "cpu":
            count_fwd, note = perf_instructions(forward)
            count_step, _ = perf_instructions(step) if count_fwd is not None else (None, note)
            notes.add(note)
            if count_fwd is not None and count_step is not None:
                instructions["fwd"] = count_fwd / (2 * traffic.points)
                instructions["bwd"] = (count_step - count_fwd) / (2 * traffic.points)
        for label, seconds, compulsory, gathered in (
            ("fwd", fwd_s, traffic.forward_bytes, traffic.gather_forward_bytes),
            ("bwd", bwd_s, traffic.backward_bytes, traffic.gather_backward_bytes),
        ):
            rate, gather_rate = compulsory / seconds, gathered / seconds
            ins = instructions[label]
            print(
                f"{name:24s} {label:4s} {seconds * 1e3:8.2f} {rate / 1e9:16.2f} "
                f"{100 * rate / bandwidth:6.1f}% {gather_rate / 1e9:14.2f} "
                f"{100 * gather_rate / bandwidth:6.1f}% "
                f"{'-' if ins is None else f'{ins:.0f}':>11s}"
            )
    if device.type == "cpu":
        for note in sorted(notes):
            print(f"instructions per point: {note}")
