"""mmdetection3d / BEVFormer command-line habits and early refusals of tools/train.py, test.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from bevformer.engine.launch import build_runner, load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t1_12ep.py"


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tool_{name[:-3]}", REPO / "tools" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(tool: ModuleType, monkeypatch, *argv: str):
    monkeypatch.setattr(sys, "argv", ["tool", *argv])
    return tool.parse_args()


def test_eval_bbox_and_format_only(monkeypatch):
    test = _tool("test.py")
    check = test.check_args
    assert check(_args(test, monkeypatch, "c.py", "k.pth", "--eval")).eval is True
    assert check(_args(test, monkeypatch, "c.py", "k.pth", "--eval", "bbox")).eval is True
    args = check(_args(test, monkeypatch, "c.py", "k.pth", "--format-only"))
    assert args.eval is False and args.format_only
    with pytest.raises(SystemExit, match="only one; unknown: \\['segm'\\]"):
        check(_args(test, monkeypatch, "c.py", "k.pth", "--eval", "segm"))
    with pytest.raises(SystemExit, match="exclude each other"):
        check(_args(test, monkeypatch, "c.py", "k.pth", "--eval", "--format-only"))


def test_an_unwritable_out_directory_fails_before_inference(tmp_path):
    check_writable = _tool("test.py").check_writable
    check_writable(str(tmp_path / "new" / "dir"))  # created
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match="cannot write the results to .*a_file/out"):
        check_writable(str(blocker / "out"))


def test_auto_resume_is_resume_without_a_path(monkeypatch):
    train = _tool("train.py")
    assert _args(train, monkeypatch, "c.py", "--auto-resume").resume is True
    assert _args(train, monkeypatch, "c.py").resume is False


def test_amp_without_cuda_or_cpu_bfloat16_is_refused_before_anything_is_built(monkeypatch):
    from bevformer.engine import launch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launch, "cpu_supports_bfloat16", lambda: False)
    cfg = load_config(str(TINY), data_root="no/such/dataroot")  # would fail later, not first
    with pytest.raises(ValueError, match="--amp without a CUDA device .* this CPU has none"):
        build_runner(cfg, amp=True)


def test_ctrl_c_prints_one_line_and_how_to_resume(monkeypatch, capsys):
    train = _tool("train.py")

    class Interrupted:
        epoch, iter, work_dir = 2, 345, "work_dirs/x"

        def train(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "build_runner", lambda cfg, **kw: Interrupted())
    monkeypatch.setattr(train, "load_config", lambda *a, **kw: SimpleNamespace())
    monkeypatch.setattr(sys, "argv", ["train.py", "c.py"])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    assert exit_info.value.code == 130
    out = capsys.readouterr().out
    assert "interrupted at epoch 3 iter 345; resume with --resume (work dir work_dirs/x)" in out
    assert "Traceback" not in out


def test_a_top_k_above_the_evaluation_limit_is_refused_at_build_time():
    cfg = load_config(str(TINY), {"model.post_processor.max_num": 600}, data_root="no/such/root")
    with pytest.raises(ValueError, match="max_num = 600: .* at most 500 boxes per sample"):
        build_runner(cfg, for_training=False)


def test_cfg_options_add_keys_on_purpose_but_catch_typos():
    typo = r"prefix it with '\+' \(--cfg-options \+model\.bev\.encoder"
    with pytest.raises(KeyError, match=typo):
        load_config(str(TINY), {"model.bev.encoder.num_layer": 2})
    # a key the config does not set, added on purpose: it reaches the config (the builder then
    # checks that the constructor accepts it)
    cfg = load_config(str(TINY), {"+model.bev.encoder.new_option": 3})
    assert cfg.model.bev.encoder.new_option == 3
    # new keys inside mmengine's own sections need no prefix
    cfg = load_config(str(TINY), {"env_cfg.cudnn_benchmark": True, "randomness.deterministic": 1})
    assert cfg.env_cfg.cudnn_benchmark is True and cfg.randomness.deterministic == 1
    with pytest.raises(KeyError, match="'env_cgf' does not exist"):  # the section must exist
        load_config(str(TINY), {"env_cgf.cudnn_benchmark": True})


def test_a_misspelt_dataroot_is_named_as_missing():
    cfg = load_config(str(TINY), data_root="no/such/dataroot")
    with pytest.raises(
        FileNotFoundError, match="the dataroot no/such/dataroot/? .* does not exist"
    ):
        build_runner(cfg)


def test_model_keys_of_the_earlier_layout_say_where_they_moved(tmp_path):
    with pytest.raises(KeyError, match=r"model\.encoder moved to model\.bev\.encoder: use "
                       r"model\.bev\.encoder\.num_layers"):  # fmt: skip
        load_config(str(TINY), {"model.encoder.num_layers": 1})
    with pytest.raises(ValueError, match=r"model\.mono_head -> model\.perspective\.mono_head"):
        load_config(str(TINY), {"+model.mono_head": None})
    old = tmp_path / "old_layout.py"
    old.write_text(f"_base_ = [{str(TINY)!r}]\nmodel = dict(frames=(-1, 0))\n")
    with pytest.raises(ValueError, match=r"model\.frames -> model\.bev\.frames"):
        load_config(str(old))
