"""Building the extension: CUDA sources compile with nvcc, reference fallback and its warning."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import pytest
import torch

import ops.build as build
from ops import dcnv3_core, dcnv3_core_reference, ms_deform_attn, ms_deform_attn_reference


@pytest.mark.slow  # about 25 s per architecture on 2 cores
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.cuda  # the CUDA toolchain: compiled where nvcc exists
@pytest.mark.skipif(build.find_nvcc() is None, reason="nvcc not found")
def test_cuda_sources_compile(arch, tmp_path):
    obj = tmp_path / f"sampling_cuda_{arch}.o"
    result = subprocess.run(
        build.cuda_compile_command(arch, obj), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert obj.stat().st_size > 10_000


def test_cache_dir_is_keyed_by_torch_version_and_sources():
    cpu, cuda = build.cache_dir(with_cuda=False), build.cache_dir(with_cuda=True)
    assert cpu.name.startswith(torch.__version__.replace("+", "_") + "-cpu-")
    assert cuda.name.startswith(torch.__version__.replace("+", "_") + "-cuda-")
    assert cpu.parent == cuda.parent and cpu.name[-16:] != cuda.name[-16:]


def test_cache_dir_is_keyed_by_the_sources_location(tmp_path, monkeypatch):
    """Two checkouts with identical sources get two build directories (no mutual rebuilds)."""
    here = build.cache_dir(with_cuda=False)
    copy = tmp_path / "other_checkout" / "csrc"
    shutil.copytree(build.CSRC, copy)
    monkeypatch.setattr(build, "CSRC", copy)
    there = build.cache_dir(with_cuda=False)
    assert here.parent == there.parent and here.name != there.name
    monkeypatch.setattr(build, "CSRC", copy)  # same place, same key
    assert build.cache_dir(with_cuda=False) == there


def _small_inputs():
    value = torch.randn(1, 6, 2, 3)
    shapes, starts = torch.tensor([[2, 3]]), torch.tensor([0])
    loc, weights = torch.rand(1, 4, 2, 1, 2, 2), torch.rand(1, 4, 2, 1, 2)
    x = torch.randn(1, 4, 4, 4)
    offset, mask = torch.randn(1, 4, 4, 2 * 9 * 2), torch.rand(1, 4, 4, 2 * 9)
    return (value, shapes, starts, loc, weights), (
        x,
        offset,
        mask,
        3,
        3,
        1,
        1,
        1,
        1,
        1,
        1,
        2,
        2,
        1.0,
    )


def test_env_var_forces_reference(monkeypatch):
    monkeypatch.setenv("BEVFORMER_OPS_REFERENCE", "1")
    monkeypatch.setattr(build, "_extension", None)
    monkeypatch.setattr(build, "_build", lambda *a: pytest.fail("must not build"))
    assert build.load_extension() is None
    msda_args, dcn_args = _small_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # forcing the reference is silent
        torch.testing.assert_close(ms_deform_attn(*msda_args), ms_deform_attn_reference(*msda_args))
        torch.testing.assert_close(dcnv3_core(*dcn_args), dcnv3_core_reference(*dcn_args))


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    def broken_build(*args):
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.delenv("BEVFORMER_OPS_REFERENCE", raising=False)
    monkeypatch.setattr(build, "_extension", None)
    monkeypatch.setattr(build, "_load_failed", False)
    monkeypatch.setattr(build, "_build", broken_build)
    msda_args, dcn_args = _small_inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ms_deform_attn(*msda_args)
        out_dcn = dcnv3_core(*dcn_args)
        ms_deform_attn(*msda_args)
    messages = [str(w.message) for w in caught if "could not build" in str(w.message)]
    assert len(messages) == 1 and "command not found" in messages[0]
    torch.testing.assert_close(out, ms_deform_attn_reference(*msda_args))
    torch.testing.assert_close(out_dcn, dcnv3_core_reference(*dcn_args))
