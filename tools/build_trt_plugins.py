"""Build the TensorRT plugin library of the deformable operators (``ops/tensorrt``).

    python tools/build_trt_plugins.py [--tensorrt-include DIR] [--out PATH] [--arch ARCH]
        [--dry-run]

Compiles ``ops/tensorrt/*.cu`` and ``*.cpp`` with nvcc into one shared library holding the
IPluginV3 plugins ``DCNv3`` and ``MultiScaleDeformableAttention`` (version "1", the ONNX nodes
``bevformer::DCNv3`` / ``bevformer::MultiScaleDeformableAttention``; see ``ops/README.md``,
"TensorRT plugins"). Load it with ``IPluginRegistry::loadLibrary`` (Python:
``trt.get_plugin_registry().load_library(path)``) or ``trtexec --dynamicPlugins=PATH``.

Only TensorRT's headers (TensorRT 10 or newer) and nvcc are needed: libnvinfer is not linked
(the plugins reach TensorRT through its interfaces only; the link refuses undefined symbols)
and the CUDA runtime is linked statically. Nothing is downloaded. The headers are looked up
in this order: ``--tensorrt-include``, ``$TENSORRT_INCLUDE``, ``include/`` of the installed
``tensorrt_libs`` / ``tensorrt`` Python packages, ``third_party/tensorrt/include`` of this
repository, the TensorRT Debian packages' ``/usr/include/<arch>-linux-gnu`` and
``/usr/local/tensorrt/include``. The pip wheels of TensorRT currently ship no headers; use
those of the TensorRT SDK (tar or ``libnvinfer-dev``) or the ``include/`` folder of the
NVIDIA/TensorRT GitHub repository at the tag of the installed version (e.g. ``v10.16``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "ops" / "tensorrt"
KERNEL_DIR = REPO / "ops" / "csrc"  # sampling.h, sampling_kernels.cuh (shared with torch)
DEFAULT_OUT = REPO / "build" / "libbevformer_trt_plugins.so"
MIN_TENSORRT_MAJOR = 10  # IPluginV3
HEADER = "NvInferRuntime.h"


class BuildError(RuntimeError):
    """The library cannot be built; the message says what is missing and what to do."""


def _package_includes() -> list[Path]:
    """``include/`` of the installed TensorRT Python packages (located, not imported)."""
    found = []
    for name in ("tensorrt_libs", "tensorrt"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            found.append(Path(location) / "include")
    return found


def header_candidates(explicit: str | None = None) -> list[tuple[str, Path]]:
    """(origin, folder) pairs searched for the TensorRT headers, first match wins."""
    candidates = [("--tensorrt-include", Path(explicit))] if explicit else []
    if os.environ.get("TENSORRT_INCLUDE"):
        candidates.append(("$TENSORRT_INCLUDE", Path(os.environ["TENSORRT_INCLUDE"])))
    candidates += [("Python package", p) for p in _package_includes()]
    candidates.append(("repository", REPO / "third_party" / "tensorrt" / "include"))
    machine = platform.machine()
    candidates.append(("system", Path(f"/usr/include/{machine}-linux-gnu")))
    candidates.append(("system", Path("/usr/local/tensorrt/include")))
    return candidates


def find_tensorrt_include(explicit: str | None = None) -> Path:
    """The first folder of :func:`header_candidates` holding ``NvInferRuntime.h``.

    An explicit folder (argument or ``$TENSORRT_INCLUDE``) without the header is an error
    rather than a reason to look elsewhere."""
    looked = []
    for origin, folder in header_candidates(explicit):
        if (folder / HEADER).is_file():
            return folder
        if origin in ("--tensorrt-include", "$TENSORRT_INCLUDE"):
            raise BuildError(
                f"{origin} is {folder}, which has no {HEADER}; point it at the include/ "
                "folder of TensorRT (the one holding NvInfer.h and NvInferRuntime.h)"
            )
        looked.append(f"  {folder} ({origin})")
    if not _package_includes():
        looked.append("  (no tensorrt_libs / tensorrt Python package installed)")
    raise BuildError(
        f"TensorRT headers ({HEADER}, TensorRT >= {MIN_TENSORRT_MAJOR}) not found; looked in:\n"
        + "\n".join(looked)
        + "\nThe pip wheels of TensorRT ship no headers. Pass --tensorrt-include DIR (or set "
        "TENSORRT_INCLUDE) with the include/ folder of the TensorRT SDK (tar or libnvinfer-dev) "
        "or of the NVIDIA/TensorRT GitHub repository at the tag of your TensorRT version, or "
        "copy that folder to third_party/tensorrt/include."
    )


def tensorrt_version(include: Path) -> tuple[int, int, int]:
    """(major, minor, patch) from ``NvInferVersion.h`` (direct numbers or, as in TensorRT 11,
    one level of ``TRT_*_ENTERPRISE`` macros)."""
    path = include / "NvInferVersion.h"
    if not path.is_file():
        raise BuildError(f"{path} not found: {include} does not look like TensorRT's include/")
    defines = dict(re.findall(r"^\s*#define\s+(\w+)\s+(\w+)", path.read_text(), re.MULTILINE))

    def value(name: str) -> int:
        token = defines.get(name, "")
        token = defines.get(token, token)  # NV_TENSORRT_MAJOR -> TRT_MAJOR_ENTERPRISE -> 11
        if not token.isdigit():
            raise BuildError(f"cannot read {name} from {path}")
        return int(token)

    return value("NV_TENSORRT_MAJOR"), value("NV_TENSORRT_MINOR"), value("NV_TENSORRT_PATCH")


def sources() -> list[Path]:
    """The plugin library's translation units."""
    return sorted(p for p in PLUGIN_DIR.iterdir() if p.suffix in (".cu", ".cpp"))


def compile_command(nvcc: str, include: Path, out: Path, arch: str) -> list[str]:
    """nvcc command building the shared library ``out`` for ``arch`` (``native``, ``sm_90``,
    ``all-major``: nvcc's ``-arch`` values)."""
    return [
        nvcc,
        "-shared",
        "-o",
        str(out),
        f"-arch={arch}",
        "-std=c++17",
        "-O3",
        # host code: warnings on, only the two entry points exported (plugins.cpp)
        "-Xcompiler",
        "-fPIC,-fvisibility=hidden,-Wall,-Wextra",
        # no undefined symbols (so no libnvinfer), static cudart's symbols kept private
        "-Xlinker",
        "-z,defs",
        "-Xlinker",
        "--exclude-libs=ALL",
        f"-I{PLUGIN_DIR}",
        f"-I{KERNEL_DIR}",
        "-isystem",
        str(include),
        *map(str, sources()),
    ]


def build(
    include: str | None = None,
    out: str | os.PathLike = DEFAULT_OUT,
    arch: str = "native",
    dry_run: bool = False,
) -> Path:
    """Build the plugin library; returns its path. Raises :class:`BuildError`."""
    from ops.build import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError(
            "nvcc not found (looked in $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin and "
            "on PATH); install the CUDA toolkit or set CUDA_HOME"
        )
    include_dir = find_tensorrt_include(include)
    version = tensorrt_version(include_dir)
    if version[0] < MIN_TENSORRT_MAJOR:
        raise BuildError(
            f"the headers in {include_dir} are TensorRT {'.'.join(map(str, version))}; the "
            f"plugins use IPluginV3, which needs TensorRT >= {MIN_TENSORRT_MAJOR}"
        )
    out = Path(out)
    cmd = compile_command(nvcc, include_dir, out, arch)
    print(f"TensorRT {'.'.join(map(str, version))} headers: {include_dir}")
    print(" ".join(cmd), flush=True)
    if dry_run:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(done.stderr)  # compiler warnings, if any
    if done.returncode != 0:
        hint = (
            "; on a machine without a GPU pass --arch sm_XY (e.g. sm_90)"
            if arch == "native"
            else ""
        )
        raise BuildError(f"nvcc failed with exit code {done.returncode}{hint}")
    print(f"built {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tensorrt-include",
        metavar="DIR",
        default=None,
        help="TensorRT's include/ (default: $TENSORRT_INCLUDE, then the places in the docstring)",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"library (default {DEFAULT_OUT})")
    parser.add_argument(
        "--arch", default="native", help="nvcc -arch: native (default), sm_90, all-major, ..."
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command, build nothing")
    args = parser.parse_args(argv)
    try:
        build(args.tensorrt_include, args.out, args.arch, args.dry_run)
    except BuildError as err:
        print(f"build_trt_plugins: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
