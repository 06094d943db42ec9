"""Build and load the compiled deformable sampling extension (``ops/csrc``).

The extension is compiled with ``torch.utils.cpp_extension.load`` on first use (JIT) into a
cache directory keyed by the torch version, the CUDA switch and a hash of the sources (content
and location), under a
file lock so that several processes starting at once (DDP) build it only once. ``python -m
ops.build`` builds it ahead of time. CUDA sources are included when ``torch.cuda.is_available()``
and ``nvcc`` is found; otherwise the extension is CPU-only. When compilation fails (no
compiler), :func:`load_extension` returns ``None`` after one ``warnings.warn`` and the callers
use the pure-PyTorch references.

Environment variables:
    BEVFORMER_OPS_REFERENCE=1   never build or load the extension; use the references.
    BEVFORMER_OPS_CACHE=<dir>   cache root (default ``~/.cache/bevformer_ops``).
    BEVFORMER_OPS_CUDA=0|1      force a CPU-only (0) or a CUDA (1) build.
    BEVFORMER_OPS_NATIVE=0      compile for the generic x86-64/aarch64 baseline instead of
                                the build machine's CPU (``-march=native``, the default; the
                                cache key then includes the CPU's feature flags).
    BEVFORMER_OPS_VERBOSE=1     show the compiler output.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = [
    "cache_dir",
    "cuda_compile_command",
    "extension_available",
    "find_nvcc",
    "load_extension",
    "use_reference",
]

CSRC = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ("sampling_cpu.cpp",)
CUDA_SOURCES = ("sampling_cuda.cu",)
HEADERS = ("sampling.h", "sampling_cpu_batched.h", "sampling_kernels.cuh")
EXTENSION_NAME = "bevformer_ops_ext"

_extension: ModuleType | None = None
_load_failed = False


def use_reference() -> bool:
    """True when ``BEVFORMER_OPS_REFERENCE`` asks for the pure-PyTorch references."""
    return os.environ.get("BEVFORMER_OPS_REFERENCE", "0").lower() not in ("", "0", "false", "no")


def find_nvcc() -> str | None:
    """Path of nvcc (``$CUDA_HOME/bin/nvcc``, ``/usr/local/cuda/bin/nvcc`` or on PATH)."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "nvcc")
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    for c in candidates:
        if c.is_file():
            return str(c)
    return shutil.which("nvcc")


def _want_cuda() -> bool:
    forced = os.environ.get("BEVFORMER_OPS_CUDA")
    if forced is not None:
        return forced not in ("0", "false", "no")
    return torch.cuda.is_available() and find_nvcc() is not None


def _pip_cuda_dirs() -> tuple[list[str], list[str]]:
    """Include and library dirs of the CUDA pip packages torch ships with (nvidia/cu*)."""
    site = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    includes, libs = [], []
    for root in sorted(site.glob("cu*")) if site.is_dir() else []:
        if (root / "include").is_dir():
            includes.append(str(root / "include"))
        if (root / "lib").is_dir():
            libs.append(str(root / "lib"))
    return includes, libs


def _native() -> bool:
    return os.environ.get("BEVFORMER_OPS_NATIVE", "1") not in ("0", "false", "no")


def _cpu_flags() -> str:
    """The CPU's feature flags (part of the cache key of ``-march=native`` builds)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sources_hash(with_cuda: bool) -> str:
    h = hashlib.sha256()
    h.update(_cpu_flags().encode() if _native() else b"generic")
    # ninja's build file names the sources by absolute path: two checkouts sharing one build
    # directory would rebuild each other's extension on every switch, so the location counts
    h.update(str(CSRC.resolve()).encode())
    names = HEADERS + CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    for name in names:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    h.update(Path(__file__).read_bytes())  # build flags live here
    return h.hexdigest()[:16]


def cache_dir(with_cuda: bool | None = None) -> Path:
    """Build directory: ``<root>/<torch version>-<cpu|cuda>-<hash>``, the hash over the sources'
    content and location and the build flags."""
    if with_cuda is None:
        with_cuda = _want_cuda()
    root = Path(os.environ.get("BEVFORMER_OPS_CACHE", Path.home() / ".cache" / "bevformer_ops"))
    tag = f"{torch.__version__}-{'cuda' if with_cuda else 'cpu'}-{_sources_hash(with_cuda)}"
    return root / tag.replace("+", "_")


def _build(with_cuda: bool, verbose: bool) -> ModuleType:
    from filelock import FileLock
    from torch.utils import cpp_extension

    build_dir = cache_dir(with_cuda)
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(CSRC / s) for s in CPU_SOURCES]
    # -fopenmp: at::parallel_for is OpenMP-based and header-inline (serial without it).
    # Reassociation lets the channel reductions vectorise with a tree sum.
    cflags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math"]
    cflags += ["-fno-signed-zeros"] + (["-march=native"] if _native() else [])
    cuda_flags: list[str] = []
    includes: list[str] = [str(CSRC)]
    ldflags: list[str] = ["-fopenmp"]
    if with_cuda:
        nvcc = find_nvcc()
        if nvcc is not None and not os.environ.get("CUDA_HOME"):
            os.environ["CUDA_HOME"] = str(Path(nvcc).parent.parent)
        sources += [str(CSRC / s) for s in CUDA_SOURCES]
        cflags.append("-DWITH_CUDA")
        cuda_flags = ["-O3", "-DWITH_CUDA"]
        pip_inc, pip_lib = _pip_cuda_dirs()
        includes += pip_inc
        ldflags += [f"-L{d}" for d in pip_lib]
    with FileLock(str(build_dir / "build.lock")):
        return cpp_extension.load(
            name=EXTENSION_NAME,
            sources=sources,
            extra_cflags=cflags,
            extra_cuda_cflags=cuda_flags,
            extra_include_paths=includes,
            extra_ldflags=ldflags,
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            verbose=verbose,
        )


def load_extension() -> ModuleType | None:
    """The compiled extension, built on first call; ``None`` when disabled or unbuildable."""
    global _extension, _load_failed
    if _extension is not None:
        return _extension
    if _load_failed or use_reference():
        return None
    verbose = os.environ.get("BEVFORMER_OPS_VERBOSE", "0") not in ("", "0")
    try:
        _extension = _build(_want_cuda(), verbose)
    except Exception as err:  # no compiler, broken toolchain, ...: fall back, warn once
        _load_failed = True
        reason = str(err).strip().splitlines()[-1][:300] if str(err).strip() else ""
        warnings.warn(
            "bevformer ops: could not build the C++/CUDA extension "
            f"({type(err).__name__}: {reason});"
            " using the pure-PyTorch reference kernels (slower, more memory). Build with "
            "`python -m ops.build` and BEVFORMER_OPS_VERBOSE=1 to see the compiler output, or "
            "set BEVFORMER_OPS_REFERENCE=1 to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return _extension


def extension_available() -> bool:
    """True when the compiled extension is (or can be) loaded."""
    return load_extension() is not None


def cuda_compile_command(arch: str, output: str | os.PathLike) -> list[str]:
    """nvcc command compiling the CUDA sources to an object for ``arch`` (e.g. ``"sm_80"``)."""
    from torch.utils import cpp_extension

    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    pip_inc, _ = _pip_cuda_dirs()
    includes = [str(CSRC), *cpp_extension.include_paths(), *pip_inc]
    py_inc = sysconfig.get_paths()["include"]
    compute = arch.replace("sm_", "compute_")
    return [
        nvcc,
        "-c",
        str(CSRC / CUDA_SOURCES[0]),
        "-o",
        str(output),
        f"-gencode=arch={compute},code={arch}",
        "-std=c++20",
        "-O3",
        "-DWITH_CUDA",
        "-DTORCH_EXTENSION_NAME=" + EXTENSION_NAME,
        "-D_GLIBCXX_USE_CXX11_ABI=" + str(int(torch._C._GLIBCXX_USE_CXX11_ABI)),
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
        "--expt-relaxed-constexpr",
        "-Xcompiler",
        "-fPIC",
        *[f"-I{d}" for d in includes],
        f"-I{py_inc}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Ahead-of-time build: ``python -m ops.build [--cpu-only] [--verbose]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-only", action="store_true", help="build without CUDA sources")
    parser.add_argument("--verbose", action="store_true", help="show the compiler output")
    args = parser.parse_args(argv)
    with_cuda = False if args.cpu_only else _want_cuda()
    ext = _build(with_cuda, args.verbose)
    print(f"built {ext.__name__} (cuda={ext.with_cuda}) in {cache_dir(with_cuda)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
