"""Benchmark of the project's CUDA sampling kernels against the official compiled kernels.

The baseline users actually have is not the grid_sample reference but the official CUDA
extensions: InternImage's ``DCNv3`` (``classification/ops_dcnv3``), Deformable DETR's
``MultiScaleDeformableAttention`` (``models/ops``, the kernel BEVFormer and mmcv use) and,
where given, ``DCNv4`` (OpenGVLab/DCNv4 ``DCNv4_op``: ``dcnv4_forward`` and
``flash_deform_attn_forward``). This module JIT-builds them from their source folders with
``torch.utils.cpp_extension.load`` (the sources, include dirs, defines and nvcc flags of each
project's ``setup.py``), calls their raw extension entry points with the same inputs as ours
and reports, per case and dtype, forward and forward+backward time (CUDA events, median after a
warm-up), the ratio official / ours (> 1: ours is faster) and the largest output and gradient
differences. Used by ``tools/benchmark.py official-ops``.

Sources that do not compile unmodified with the installed torch/CUDA are built from a copy
with the textual patches of :data:`PATCHES` that the installed torch needs (with torch 2.x: the
deprecated ``Tensor::type()`` in ``AT_DISPATCH_*`` of DCNv3 and MSDA becomes
``scalar_type()``); each applied patch is listed in the output. The given folders are never
modified.

Cases (1600x640 images, 6 cameras)::

    DCNv3  InternImage-XL stages 1-4: N=6, H x W = 160x400 / 80x200 / 40x100 / 20x50,
           C = 192 / 384 / 768 / 1536, G = C/16, 3x3 kernel, pad 1, offset_scale 2.0
    MSDA   spatial cross-attention: B=6 cameras, Q=10000 queries per camera, 4 FPN levels
           (80x200 ... 10x25), 8 heads x 32 channels, 8 points
           temporal self-attention: B=2 (previous and current BEV), Q=40000, 1 level 200x200,
           8 heads x 32, 4 points
           decoder cross-attention: B=1, Q=900, 1 level 200x200, 8 heads x 32, 4 points

DCNv4 has no softmax inside (``softmax=False``) and takes offsets and mask in one tensor,
per group ``[K*2 offsets (x, y), K mask]``, padded to a multiple of 8 channels
(``DCNv4_op/DCNv4/modules/dcnv4.py``); it is given DCNv3's offsets and softmax-normalised mask,
so it computes the same function. FlashDeformAttn always applies a softmax over the L*P
logits of a head (``flash_deform_im2col_cuda.cuh``); it is given ``log(attention_weights)``,
whose softmax is the weights themselves (they sum to 1 per query and head).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

__all__ = [
    "CASES",
    "OFFICIAL_OPS",
    "PATCHES",
    "BuildSpec",
    "OfficialOp",
    "build_official",
    "compile_check",
    "find_op_dir",
    "nvcc_commands",
    "prepare_sources",
    "run",
]

# ------------------------------------------------------------------------- official projects


@dataclass(frozen=True)
class OfficialOp:
    """One official extension: where its op folder lives in the project's repository, the
    extension name of its ``setup.py`` and the nvcc flags it passes (``extra_compile_args``)."""

    key: str
    project: str
    extension: str  # TORCH_EXTENSION_NAME; setup.py's name with "." replaced (a module name)
    op_dirs: tuple[str, ...]  # candidate op folders relative to the repository root
    nvcc_flags: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]  # the dtypes its CUDA forward dispatches (AT_DISPATCH_*)


_HALF_FLAGS = (
    "-DCUDA_HAS_FP16=1",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
)

OFFICIAL_OPS: dict[str, OfficialOp] = {
    op.key: op
    for op in (
        # classification/ops_dcnv3/setup.py: the half flags are commented out there;
        # dcnv3_cuda.cu dispatches AT_DISPATCH_FLOATING_TYPES_AND_HALF.
        OfficialOp(
            "dcnv3",
            "InternImage",
            "DCNv3",
            ("classification/ops_dcnv3", "detection/ops_dcnv3", "segmentation/ops_dcnv3"),
            (),
            (torch.float32, torch.float16),
        ),
        # models/ops/setup.py; ms_deform_attn_cuda.cu dispatches AT_DISPATCH_FLOATING_TYPES.
        OfficialOp(
            "msda",
            "Deformable-DETR",
            "MultiScaleDeformableAttention",
            ("models/ops",),
            _HALF_FLAGS,
            (torch.float32,),
        ),
        # DCNv4_op/setup.py (extension "DCNv4.ext"); AT_DISPATCH_FLOATING_TYPES_AND2(Half,
        # BFloat16).
        OfficialOp(
            "dcnv4",
            "DCNv4",
            "DCNv4_ext",
            ("DCNv4_op",),
            (*_HALF_FLAGS, "-O3"),
            (torch.float32, torch.float16, torch.bfloat16),
        ),
    )
}


def _torch_header(relative: str) -> str:
    """Text of one of torch's C++ headers ('' when it does not exist)."""
    from torch.utils import cpp_extension

    for root in cpp_extension.include_paths():
        path = Path(root) / relative
        if path.is_file():
            return path.read_text(errors="replace")
    return ""


@dataclass(frozen=True)
class SourcePatch:
    """A textual patch of a copy of the official sources, applied where ``pattern`` occurs
    and only when ``needed()`` says the installed torch requires it."""

    pattern: str  # regular expression
    replacement: str
    reason: str
    needed: Callable[[], bool]


# The minimal patches for current PyTorch (2.x); ``--compile-check`` shows which apply.
PATCHES: tuple[SourcePatch, ...] = (
    SourcePatch(
        r"(\w+)\.type\(\)(?=\s*,\s*\")",
        r"\1.scalar_type()",
        "AT_DISPATCH_* takes a ScalarType; torch 2.x has no overload for the deprecated "
        "Tensor::type() (DeprecatedTypeProperties), a compile error",
        lambda: (
            "DeprecatedTypeProperties" not in _torch_header("torch/headeronly/core/Dispatch.h")
            and "DeprecatedTypeProperties" not in _torch_header("ATen/Dispatch.h")
        ),
    ),
    SourcePatch(
        r"#include <THC/THCAtomics\.cuh>",
        "#include <ATen/cuda/Atomic.cuh>",
        "this torch has no THC/THCAtomics.cuh; its atomicAdd overloads are in ATen/cuda/Atomic.cuh",
        lambda: not _torch_header("THC/THCAtomics.cuh"),
    ),
    SourcePatch(
        r"\.data<",
        ".data_ptr<",
        "this torch has no Tensor::data<T>(); data_ptr<T>() is the same pointer",
        lambda: "T * data() const" not in _torch_header("ATen/core/TensorBody.h"),
    ),
)


@dataclass
class BuildSpec:
    """Arguments of ``torch.utils.cpp_extension.load`` for one official extension."""

    name: str
    root: Path  # the (patched copy of the) op folder
    sources: list[str]
    include_dirs: list[str]
    cflags: list[str]
    cuda_cflags: list[str]
    patches: list[str] = field(default_factory=list)


def find_op_dir(op: OfficialOp, path: str | os.PathLike) -> Path:
    """The op folder (holding ``setup.py`` and ``src/``): ``path`` itself, or one of
    ``op.op_dirs`` under it (a repository root). Raises FileNotFoundError otherwise."""
    base = Path(path)
    for candidate in (base, *(base / d for d in op.op_dirs)):
        if (candidate / "src").is_dir() and (candidate / "setup.py").is_file():
            return candidate
    raise FileNotFoundError(
        f"{op.project} sources not found under {base}: expected a folder with setup.py and src/ "
        f"(the op folder, or a repository root containing one of {', '.join(op.op_dirs)}); "
        f"pass the {op.project} op folder"
    )


def _apply_patches(folder: Path) -> list[str]:
    applied = []
    patches = [p for p in PATCHES if p.needed()]
    for path in sorted(folder.rglob("*")):
        if path.suffix not in (".cpp", ".cu", ".cuh", ".h") or not path.is_file():
            continue
        text = path.read_text()
        for patch in patches:
            text, count = re.subn(patch.pattern, patch.replacement, text)
            if count:
                rel = path.relative_to(folder)
                applied.append(
                    f"{rel}: {patch.pattern} -> {patch.replacement} x{count} ({patch.reason})"
                )
        path.write_text(text)
    return applied


def prepare_sources(
    op: OfficialOp, src: str | os.PathLike, work_dir: str | os.PathLike
) -> BuildSpec:
    """Copy the op's ``src/`` under ``work_dir``, apply :data:`PATCHES`, and return the build
    arguments: the sources of its ``setup.py`` (``src/*.cpp``, ``src/cpu/*.cpp``,
    ``src/cuda/*.cu``), ``src`` as include dir, ``WITH_CUDA`` and its nvcc flags.

    The copy lives in ``work_dir/<extension>-<hash of the patched sources and flags>/src`` and
    is left untouched when it exists, so that a later build finds its objects up to date."""
    op_dir = find_op_dir(op, src)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{op.extension}-", dir=work_dir)) / "src"
    shutil.copytree(op_dir / "src", staging)
    patches = _apply_patches(staging)
    h = hashlib.sha256(" ".join(op.nvcc_flags).encode())
    for f in sorted(staging.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(staging)).encode() + b"\0" + f.read_bytes())
    root = work_dir / f"{op.extension}-{h.hexdigest()[:12]}"
    if not (root / "src").is_dir():
        with contextlib.suppress(OSError):  # another process may have moved its copy there
            root.mkdir()
            staging.rename(root / "src")
    shutil.rmtree(staging.parent, ignore_errors=True)
    dest = root / "src"
    sources = [
        *sorted(dest.glob("*.cpp")),
        *sorted(dest.glob("cpu/*.cpp")),
        *sorted(dest.glob("cuda/*.cu")),
    ]
    return BuildSpec(
        name=op.extension,
        root=root,
        sources=[str(s) for s in sources],
        include_dirs=[str(dest)],
        cflags=["-O3", "-DWITH_CUDA"],
        cuda_cflags=["-DWITH_CUDA", *op.nvcc_flags],
        patches=patches,
    )


def _cuda_paths() -> tuple[list[str], list[str]]:
    """Include and library dirs of torch's CUDA pip packages (as ``ops.build`` uses them)."""
    from ops.build import _pip_cuda_dirs

    return _pip_cuda_dirs()


def nvcc_commands(spec: BuildSpec, arch: str, out_dir: str | os.PathLike) -> list[list[str]]:
    """nvcc commands compiling each ``.cu`` source of ``spec`` to an object for ``arch``
    (e.g. ``"sm_90"``) with the flags ``cpp_extension`` adds; for checking the build arguments
    on a machine without a GPU. Raises RuntimeError when nvcc is not found."""
    from torch.utils import cpp_extension

    from ops.build import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    pip_inc, _ = _cuda_paths()
    includes = [
        *spec.include_dirs,
        *cpp_extension.include_paths(),
        *pip_inc,
        sysconfig.get_paths()["include"],
    ]
    compute = arch.replace("sm_", "compute_")
    commands = []
    for source in spec.sources:
        if not source.endswith(".cu"):
            continue
        obj = Path(out_dir) / (Path(source).stem + f".{arch}.o")
        commands.append(
            [
                nvcc,
                "-c",
                source,
                "-o",
                str(obj),
                f"-gencode=arch={compute},code={arch}",
                "-std=c++20",
                "-O3",
                f"-DTORCH_EXTENSION_NAME={spec.name}",
                "-DTORCH_API_INCLUDE_EXTENSION_H",
                f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
                *cpp_extension.COMMON_NVCC_FLAGS,
                *spec.cuda_cflags,
                "-Xcompiler",
                "-fPIC",
                *[f"-I{d}" for d in includes],
            ]
        )
    return commands


def compile_check(
    sources: dict[str, str], arch: str, work_dir: str | os.PathLike
) -> dict[str, dict]:
    """Compile every ``.cu`` source of the given official ops (``{key: folder}``) with nvcc for
    ``arch``, without a GPU; returns ``{key: {"ok", "patches", "errors"}}``."""
    report = {}
    for key, src in sources.items():
        spec = prepare_sources(OFFICIAL_OPS[key], src, work_dir)
        errors = []
        for cmd in nvcc_commands(spec, arch, spec.root):
            print(f"[{key}] nvcc {Path(cmd[2]).name} ({arch})", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                errors.append(f"{Path(cmd[2]).name}:\n{proc.stderr[-4000:]}")
        report[key] = {"ok": not errors, "patches": spec.patches, "errors": errors}
    return report


def default_cache() -> Path:
    """``$BEVFORMER_OPS_CACHE/official`` (default ``~/.cache/bevformer_ops/official``)."""
    root = os.environ.get("BEVFORMER_OPS_CACHE", Path.home() / ".cache" / "bevformer_ops")
    return Path(root) / "official"


def build_official(
    op: OfficialOp,
    src: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    verbose: bool = False,
) -> tuple[ModuleType, list[str]]:
    """JIT-build (or load from the cache) the official extension ``op`` from ``src``; returns
    the module and the list of applied patches. ``TORCH_CUDA_ARCH_LIST`` defaults to the
    current GPU's compute capability (one architecture builds fastest)."""
    from filelock import FileLock
    from torch.utils import cpp_extension

    from ops.build import find_nvcc

    cache = Path(cache) if cache is not None else default_cache()
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    nvcc = find_nvcc()
    if nvcc is not None and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = str(Path(nvcc).parent.parent)
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"{op.extension}.lock")):
        spec = prepare_sources(op, src, cache)
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "all").replace(" ", "").replace(";", "_")
        build_dir = spec.root / f"build-{torch.__version__.replace('+', '_')}-{arch}"
        build_dir.mkdir(parents=True, exist_ok=True)
        pip_inc, pip_lib = _cuda_paths()
        module = cpp_extension.load(
            name=spec.name,
            sources=spec.sources,
            extra_cflags=spec.cflags,
            extra_cuda_cflags=spec.cuda_cflags,
            extra_include_paths=spec.include_dirs + pip_inc,
            extra_ldflags=[f"-L{d}" for d in pip_lib],
            build_directory=str(build_dir),
            with_cuda=True,
            verbose=verbose,
        )
    return module, spec.patches


# ---------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One benchmark shape of one operator (``op``: ``"dcnv3"`` or ``"msda"``)."""

    name: str
    op: str
    description: str
    params: dict


def _dcnv3(N, H, W, C, G):
    return {"N": N, "H": H, "W": W, "C": C, "G": G, "offset_scale": 2.0}


def _msda(B, levels, Q, P, ordered):
    return {
        "B": B,
        "levels": levels,
        "Q": Q,
        "heads": 8,
        "channels": 32,
        "points": P,
        "ordered": ordered,
    }


FPN_1600x640 = ((80, 200), (40, 100), (20, 50), (10, 25))  # strides 8, 16, 32, 64
BEV = ((200, 200),)

CASES: dict[str, Case] = {
    c.name: c
    for c in (
        *(
            Case(
                f"internimage_xl_stage{i + 1}",
                "dcnv3",
                f"DCNv3 InternImage-XL stage {i + 1}: 6x{h}x{w}, C={c}, G={c // 16}, scale 2",
                _dcnv3(6, h, w, c, c // 16),
            )
            for i, (h, w, c) in enumerate(
                ((160, 400, 192), (80, 200, 384), (40, 100, 768), (20, 50, 1536))
            )
        ),
        Case(
            "spatial_cross_attn",
            "msda",
            "MSDA spatial cross-attention: 6 cams x 10000 queries, 4 levels, 8x32, 8 points",
            _msda(6, FPN_1600x640, 10000, 8, True),
        ),
        Case(
            "temporal_self_attn",
            "msda",
            "MSDA temporal self-attention: 2 x 40000 queries, 200x200 BEV, 8x32, 4 points",
            _msda(2, BEV, 40000, 4, True),
        ),
        Case(
            "decoder_cross_attn",
            "msda",
            "MSDA decoder cross-attention: 900 queries, 200x200 BEV, 8x32, 4 points",
            _msda(1, BEV, 900, 4, False),
        ),
    )
}


def _dcnv3_inputs(p: dict, device: torch.device, generator: torch.Generator) -> list[Tensor]:
    """input [N, H, W, C], offset [N, H, W, G*9*2], mask [N, H, W, G*9] (softmax over the 9)."""
    N, H, W, C, G = p["N"], p["H"], p["W"], p["C"], p["G"]
    kw = {"device": device, "generator": generator}
    x = torch.randn(N, H, W, C, **kw)
    offset = torch.randn(N, H, W, G * 9 * 2, **kw)
    mask = torch.randn(N, H, W, G, 9, **kw).softmax(-1).flatten(-2)
    return [x, offset, mask]


def _msda_inputs(p: dict, device: torch.device, generator: torch.Generator) -> list[Tensor]:
    """value [B, S, H, C], locations [B, Q, H, L, P, 2], weights [B, Q, H, L, P] (sum 1 over
    L*P); points scatter (3% of the map) around reference points on a raster (``ordered``, as
    BEV queries) or uniformly random ones (object queries)."""
    B, Q, Hh, C, P = p["B"], p["Q"], p["heads"], p["channels"], p["points"]
    L = len(p["levels"])
    S = sum(h * w for h, w in p["levels"])
    kw = {"device": device, "generator": generator}
    value = torch.randn(B, S, Hh, C, **kw)
    if p["ordered"]:
        side = math.isqrt(Q - 1) + 1
        idx = torch.arange(Q, device=device)
        ref = torch.stack([(idx % side + 0.5) / side, (idx // side + 0.5) / side], -1)
    else:
        ref = torch.rand(Q, 2, **kw)
    loc = ref[None, :, None, None, None] + 0.03 * torch.randn(B, Q, Hh, L, P, 2, **kw)
    weights = torch.randn(B, Q, Hh, L * P, **kw).softmax(-1).view(B, Q, Hh, L, P)
    return [value, loc, weights]


# --------------------------------------------------------------------------- op adapters
# Each adapter returns (forward, backward): forward(*inputs) -> output; backward(*inputs,
# grad_output) -> gradients of the inputs, in the project's layout (compared across kernels).


def _geometry(p: dict) -> tuple:
    """DCNv3 geometry of InternImage's layers: kernel 3x3, stride 1, pad 1, dilation 1, groups,
    group channels, offset_scale (``classification/models/intern_image.py``)."""
    return (3, 3, 1, 1, 1, 1, 1, 1, p["G"], p["C"] // p["G"], p["offset_scale"])


def _ours(ext: ModuleType, case: Case, levels: tuple[Tensor, Tensor] | None):
    # sampling_cpu.cpp: dcnv3_forward(input, offset, mask, <geometry>, remove_center),
    # dcnv3_backward(..., remove_center, grad_output); msda_forward(value, shapes, starts,
    # locations, weights), msda_backward(..., weights, grad_output)
    if case.op == "dcnv3":
        geo = (*_geometry(case.params), False)
        return (
            lambda x, o, m: ext.dcnv3_forward(x, o, m, *geo),
            lambda x, o, m, g: ext.dcnv3_backward(x, o, m, *geo, g),
        )
    shapes, starts = levels
    return (
        lambda v, lc, w: ext.msda_forward(v, shapes, starts, lc, w),
        lambda v, lc, w, g: ext.msda_backward(v, shapes, starts, lc, w, g),
    )


def _ours_op(case: Case, levels: tuple[Tensor, Tensor] | None) -> Callable:
    """The public op (input checks, dtype handling, autograd) for the fwd timings."""
    from ops import dcnv3_core, ms_deform_attn

    if case.op == "dcnv3":
        geo = _geometry(case.params)
        return lambda x, o, m: dcnv3_core(x, o, m, *geo, 256)
    shapes, starts = levels
    return lambda v, lc, w: ms_deform_attn(v, shapes, starts, lc, w)


def _official(ext: ModuleType, case: Case, levels: tuple[Tensor, Tensor] | None):
    # dcnv3.h: dcnv3_forward(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w,
    # pad_h, pad_w, dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step,
    # remove_center); dcnv3_backward(... offset_scale, grad_output, im2col_step, remove_center)
    # ms_deform_attn.h: ms_deform_attn_forward(value, spatial_shapes, level_start_index,
    # sampling_loc, attn_weight, im2col_step); _backward(..., attn_weight, grad_output, step)
    if case.op == "dcnv3":
        geo = _geometry(case.params)
        return (
            lambda x, o, m: ext.dcnv3_forward(x, o, m, *geo, 256, 0),
            lambda x, o, m, g: ext.dcnv3_backward(x, o, m, *geo, g, 256, 0),
        )
    shapes, starts = levels
    step = 64  # BEVFormer's and Deformable DETR's im2col_step
    return (
        lambda v, lc, w: ext.ms_deform_attn_forward(v, shapes, starts, lc, w, step),
        lambda v, lc, w, g: ext.ms_deform_attn_backward(v, shapes, starts, lc, w, g, step),
    )


def _launch_spec(rows: int, G: int, D: int, limit: int, d_stride: int) -> tuple[int, int]:
    """(d_stride, threads per block) as DCNv4's ``findspec``/``find_spec_bwd``: the largest
    multiplier m <= 64 dividing ``rows`` with m*G*D/d_stride <= ``limit``, else 1."""
    fits = [m for m in range(1, 65) if rows % m == 0 and m * G * D // d_stride <= limit]
    m = max(fits, default=1)
    return d_stride, m * G * D // d_stride


def _dcnv4_tables(src: str | os.PathLike) -> tuple[dict, dict]:
    """TABLE and BWDTABLE (tuned launch specs) of DCNv4's ``functions/table.py``, read as
    literals (nothing of it is executed)."""
    path = Path(src) / "DCNv4" / "functions" / "table.py"
    tables = {"TABLE": {}, "BWDTABLE": {}}
    if path.is_file():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                if node.targets[0].id in tables:
                    tables[node.targets[0].id] = ast.literal_eval(node.value)
    return tables["TABLE"], tables["BWDTABLE"]


def _dcnv4(ext: ModuleType, case: Case, levels, tables: tuple[dict, dict]):
    """DCNv4's dcnv4_forward(value, p_offset, kernel_h, kernel_w, stride_h, stride_w, pad_h,
    pad_w, dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step,
    remove_center, d_stride, block_thread, softmax) and dcnv4_backward(..., im2col_step,
    grad_output, remove_center, d_stride, block_thread, softmax) (``src/dcnv4.h``); for MSDA
    cases flash_deform_attn_forward(value, spatial_shapes, level_start_index,
    sampling_loc_attn, im2col_step, K, d_stride, block_thread) and its backward. Returns
    (pack, forward, backward): ``pack(*inputs)`` makes DCNv4's inputs once, outside the timing
    (a DCNv4 layer's linear projection emits the packed layout directly)."""
    if case.op == "dcnv3":
        p = case.params
        N, H, W, G, D = p["N"], p["H"], p["W"], p["G"], p["C"] // p["G"]
        key = f"{N}x{H}x{W}x{G}x{D}"
        fwd = tables[0][key][:2] if key in tables[0] else _launch_spec(N * H * W, G, D, 512, 8)
        bwd = (
            tables[1][key][:2]
            if key in tables[1]
            else _launch_spec(N * H * W, G, D, 256, 2 if D >= 64 else 1)
        )
        geo = (*_geometry(p), 256)
        padded = math.ceil(G * 9 * 3 / 8) * 8

        def pack(x: Tensor, o: Tensor, m: Tensor) -> list[Tensor]:
            om = torch.cat([o.unflatten(-1, (G, 18)), m.unflatten(-1, (G, 9))], -1).flatten(-2)
            return [x, torch.nn.functional.pad(om, (0, padded - om.shape[-1])).contiguous()]

        def forward(x, om):
            return ext.dcnv4_forward(x, om, *geo, 0, *fwd, False)

        def backward(x, om, g):  # gradients of input and offset_mask (timed only)
            return ext.dcnv4_backward(x, om, *geo, g, 0, *bwd, False)

        return pack, forward, backward
    shapes, starts = levels
    p = case.params
    B, Q, G, D, P = p["B"], p["Q"], p["heads"], p["channels"], p["points"]
    fwd = _launch_spec(B * Q, G, D, 512, 8)
    bwd = _launch_spec(B * Q, G, D, 256, 2 if D >= 64 else 1)

    def pack(v: Tensor, lc: Tensor, w: Tensor) -> list[Tensor]:
        logits = w.clamp_min(torch.finfo(w.dtype).tiny).log().flatten(-2)
        return [v, torch.cat([lc.flatten(-3), logits], -1).contiguous()]

    def forward(v, la):
        return ext.flash_deform_attn_forward(v, shapes, starts, la, 64, P, *fwd)

    def backward(v, la, g):  # gradients of value and of locations + logits (timed only)
        return ext.flash_deform_attn_backward(v, shapes, starts, la, g, 64, P, *bwd)

    return pack, forward, backward


# ---------------------------------------------------------------------------------- timing


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls, each
    timed with CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _rel_diff(a: Tensor | None, b: Tensor | None) -> float | None:
    """max |a - b| / max |b| (float64), or None when either is missing."""
    if a is None or b is None:
        return None
    a, b = a.double(), b.double().reshape(a.shape)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@dataclass
class Row:
    """One (case, dtype) measurement; times in ms, ``None`` where not measured."""

    case: str
    dtype: str
    ours_fwd_ms: float | None = None
    ours_fwdbwd_ms: float | None = None
    ours_op_fwd_ms: float | None = None
    official_fwd_ms: float | None = None
    official_fwdbwd_ms: float | None = None
    dcnv4_fwd_ms: float | None = None
    dcnv4_fwdbwd_ms: float | None = None
    out_max_abs_diff: float | None = None
    out_rel_diff: float | None = None
    grad_rel_diff: list | None = None
    dcnv4_out_rel_diff: float | None = None
    notes: list = field(default_factory=list)


def _guard(row: Row, what: str, fn: Callable):
    """Run ``fn``; a failure becomes a note of the row (a finding, not a crash)."""
    try:
        return fn()
    except Exception as err:  # an official kernel refusing a dtype/shape is a finding
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        row.notes.append(f"{what}: {type(err).__name__}: {msg}")
        return None


def bench(
    case: Case, dtype: torch.dtype, ours_ext: ModuleType, officials: dict, repeats: int
) -> Row:
    """Measure one case in one dtype (``officials``: key -> (module, extra) as built)."""
    dev = torch.device("cuda")
    row = Row(case.name, str(dtype).removeprefix("torch."))
    gen = torch.Generator(device=dev).manual_seed(0)
    make = _dcnv3_inputs if case.op == "dcnv3" else _msda_inputs
    inputs = [t.to(dtype) for t in make(case.params, dev, gen)]
    levels = None
    if case.op == "msda":
        shapes = torch.tensor(case.params["levels"], dtype=torch.int64, device=dev)
        starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        levels = (shapes, starts)

    ours_f, ours_b = _ours(ours_ext, case, levels)
    out = ours_f(*inputs)
    grad = torch.randn(out.shape, device=dev, generator=gen).to(dtype)
    row.ours_fwd_ms = time_ms(lambda: ours_f(*inputs), repeats)
    row.ours_fwdbwd_ms = time_ms(lambda: (ours_f(*inputs), ours_b(*inputs, grad)), repeats)
    op = _ours_op(case, levels)
    row.ours_op_fwd_ms = _guard(row, "ours op", lambda: time_ms(lambda: op(*inputs), repeats))
    ours_grads = ours_b(*inputs, grad)

    official_key = case.op
    if official_key in officials:
        ext = officials[official_key][0]
        if dtype not in OFFICIAL_OPS[official_key].dtypes:
            row.notes.append(
                f"official {OFFICIAL_OPS[official_key].project}: no {row.dtype} "
                "kernel (not in its AT_DISPATCH)"
            )
        else:
            off_f, off_b = _official(ext, case, levels)
            ref = _guard(row, "official fwd", lambda: off_f(*inputs))
            if ref is not None:
                row.out_max_abs_diff = float((out.double() - ref.double()).abs().max())
                row.out_rel_diff = _rel_diff(out, ref)
                row.official_fwd_ms = time_ms(lambda: off_f(*inputs), repeats)
                ref_grads = _guard(row, "official bwd", lambda: off_b(*inputs, grad))
                if ref_grads is not None:
                    row.grad_rel_diff = [_rel_diff(a, b) for a, b in zip(ours_grads, ref_grads)]
                    row.official_fwdbwd_ms = time_ms(
                        lambda: (off_f(*inputs), off_b(*inputs, grad)), repeats
                    )
    if "dcnv4" in officials:
        ext, tables = officials["dcnv4"]
        v4_pack, v4_f, v4_b = _dcnv4(ext, case, levels, tables)
        v4_in = v4_pack(*inputs)
        v4_out = _guard(row, "DCNv4 fwd", lambda: v4_f(*v4_in))
        if v4_out is not None:
            row.dcnv4_out_rel_diff = _rel_diff(out, v4_out)
            row.dcnv4_fwd_ms = time_ms(lambda: v4_f(*v4_in), repeats)
            if _guard(row, "DCNv4 bwd", lambda: v4_b(*v4_in, grad)) is not None:
                row.dcnv4_fwdbwd_ms = time_ms(lambda: (v4_f(*v4_in), v4_b(*v4_in, grad)), repeats)
    return row


# ----------------------------------------------------------------------------------- report


def _fmt(v: float | None, spec: str = "8.3f") -> str:
    return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:6.2f}x" if a is not None and b else "     -"


def format_table(rows: list[Row]) -> str:
    """Table of the rows: forward and forward+backward, ratio official / ours (> 1: ours is
    faster), DCNv4, and the largest relative differences to the official output/gradients."""
    head = (
        f"{'case':24s} {'dtype':8s} {'mode':7s} {'ours ms':>8s} {'off. ms':>8s} "
        f"{'off/ours':>8s} {'DCNv4 ms':>8s} {'v4/ours':>8s} {'out max abs':>11s} "
        f"{'out rel diff':>12s} {'grad rel diff':>13s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        grad = max((g for g in r.grad_rel_diff or [] if g is not None), default=None)
        for mode, ours, off, v4 in (
            ("fwd", r.ours_fwd_ms, r.official_fwd_ms, r.dcnv4_fwd_ms),
            ("fwd+bwd", r.ours_fwdbwd_ms, r.official_fwdbwd_ms, r.dcnv4_fwdbwd_ms),
        ):
            diffs = ""
            if mode == "fwd":
                diffs = (
                    f"{_fmt(r.out_max_abs_diff, '11.1e')} {_fmt(r.out_rel_diff, '12.1e')} "
                    f"{_fmt(grad, '13.1e')}"
                )
            lines.append(
                f"{r.case:24s} {r.dtype:8s} {mode:7s} {_fmt(ours)} {_fmt(off)} "
                f"{_ratio(off, ours):>8s} {_fmt(v4)} {_ratio(v4, ours):>8s} {diffs}"
            )
        for note in r.notes:
            lines.append(f"    note: {note}")
    return "\n".join(lines)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run(
    sources: dict[str, str],
    dtypes: list[str],
    repeats: int = 20,
    cases: list[str] | None = None,
    out: str | None = None,
    cache: str | None = None,
    verbose: bool = False,
) -> list[Row]:
    """Build the given official extensions (``{"dcnv3" | "msda" | "dcnv4": folder}``) and ours,
    measure the cases and print the table; writes JSON to ``out`` when given. Raises
    SystemExit without a CUDA device or when our extension has no CUDA kernels."""
    if not torch.cuda.is_available():
        raise SystemExit(
            "official-ops needs a CUDA device (torch.cuda.is_available() is False): it times "
            "CUDA kernels. Run it on a GPU machine; without one, --compile-check checks that "
            "the official sources compile."
        )
    from ops.build import load_extension

    ours = load_extension()
    if ours is None or not ours.with_cuda:
        raise SystemExit(
            "the project's extension was not built with CUDA; run "
            "`python -m ops.build --verbose` to see why"
        )
    officials, patches = {}, {}
    for key, src in sources.items():
        module, applied = build_official(OFFICIAL_OPS[key], src, cache, verbose)
        extra = _dcnv4_tables(find_op_dir(OFFICIAL_OPS[key], src)) if key == "dcnv4" else None
        officials[key], patches[key] = (module, extra), applied
    for key, applied in patches.items():
        print(f"{OFFICIAL_OPS[key].project}: {len(applied)} source patch(es)")
        for line in applied:
            print(f"  {line}")
    props = torch.cuda.get_device_properties(0)

    def save() -> None:  # after every row, so that an interrupted run keeps its results
        if out:
            result = {
                "device": props.name,
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "repeats": repeats,
                "patches": patches,
                "cases": {n: CASES[n].description for n in cases or list(CASES)},
                "rows": [asdict(r) for r in rows],
            }
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(result, indent=1))

    rows: list[Row] = []
    for name in cases or list(CASES):
        if CASES[name].op not in officials and "dcnv4" not in officials:
            continue
        for d in dtypes:
            try:
                rows.append(bench(CASES[name], DTYPES[d], ours, officials, repeats))
            except Exception as err:  # e.g. out of memory: record it, go on with the next
                rows.append(Row(name, d, notes=[f"failed: {type(err).__name__}: {err}"[:300]]))
            torch.cuda.empty_cache()
            save()
            print("\n".join(format_table(rows[-1:]).splitlines()[2:]), flush=True)
    print(
        f"\n{props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}; median of "
        f"{repeats} after 3 warm-ups (CUDA events). ours = the project's kernels through the "
        "raw extension; off. = official kernel through its raw extension entry point; rel "
        "diff = max |ours - official| / max |official|.\n"
    )
    print(format_table(rows))
    for name in cases or list(CASES):
        print(f"  {name}: {CASES[name].description}")
    if out:
        print(f"wrote {out}")
    return rows
