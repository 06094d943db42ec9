"""``tools/test.py --drop-past-frames``: a fusion model evaluated from the current frame alone
(past slots marked missing) -- the boxes change exactly where a keyframe has a past frame;
configs where it would mean something else are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from bevformer.builder import build_model

REPO = Path(__file__).resolve().parents[2]
T1 = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t1_12ep.py"
T2 = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2_12ep.py"


def _files(cfg, tmp_path: Path, name: str) -> tuple[Path, Path]:
    torch.manual_seed(0)
    ckpt = tmp_path / f"{name}.pth"
    torch.save({"state_dict": build_model(cfg.model).state_dict()}, ckpt)
    config = tmp_path / f"{name}.py"
    cfg.dump(str(config))
    return config, ckpt


def _test(config: Path, ckpt: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "tools/test.py", str(config), str(ckpt), "--format-only"]
    command += ["--out", str(out), "--work-dir", str(out.parent), *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_dropping_the_past_changes_the_keyframes_that_have_one(tiny_cfg, tmp_path):
    config, ckpt = _files(tiny_cfg(T2), tmp_path, "t2")
    runs = {}
    for name, extra in (("with", ()), ("without", ("--drop-past-frames",))):
        done = _test(config, ckpt, tmp_path / name / "results.json", *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())["results"]
        assert ("marked missing" in done.stdout) == (name == "without")
    with_past, alone = runs["with"], runs["without"]
    assert with_past.keys() == alone.keys() and len(with_past) == 4
    changed = [token for token in with_past if with_past[token] != alone[token]]
    # the split's first keyframe has no past frame (nothing to drop); the three others have one
    assert len(changed) == 3, changed


def test_single_frame_configs_are_refused(tiny_cfg, tmp_path):
    config, ckpt = _files(tiny_cfg(T1), tmp_path, "t1")
    done = _test(config, ckpt, tmp_path / "out" / "results.json", "--drop-past-frames")
    assert done.returncode != 0
    assert "applies to fusion configs with past frames" in done.stderr
