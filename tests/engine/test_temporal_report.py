"""``tools/temporal_report.py`` on the tiny t2 config (random weights) and the test dataroot:
the table, the gradient shares and the past-cell table are printed; the encoder's dropout is
the whole train/eval gap (0 with ``--cfg-options model.bev.encoder.dropout=0.0``).
``tools/velocity_probe.py`` on the same: its table, velocity 0 above zero; a one-frame config
refused by name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from bevformer.builder import build_model

REPO = Path(__file__).resolve().parents[2]
T2 = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2_12ep.py"


def _report(config: Path, ckpt: Path, root: str, *extra: str) -> str:
    command = [sys.executable, "tools/temporal_report.py", str(config), str(ckpt)]
    command += ["--data-root", root, "--batches", "4", *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_temporal_report(tiny_cfg, tmp_path):
    cfg = tiny_cfg(T2)
    torch.manual_seed(0)
    ckpt = tmp_path / "t2.pth"
    torch.save({"state_dict": build_model(cfg.model).state_dict()}, ckpt)
    config = tmp_path / "t2.py"
    cfg.dump(str(config))
    root = cfg.data_root
    with_dropout = _report(config, ckpt, root)
    without = _report(
        config, ckpt, root, "--radius", "2", "--cfg-options", "model.bev.encoder.dropout=0.0"
    )
    rows = {}
    for name, out in (("with", with_dropout), ("without", without)):
        match = re.search(r"\| all \| (\d+) \| ([0-9.]+) \| ([0-9.]+) \|", out)
        assert match, out
        rows[name] = [float(v) for v in match.groups()]
        assert re.search(r"velocity 0\.\d+, class 0\.\d+", out), out
        for kind in ("static", "moving"):  # the past-cell table: n, two shares, four offsets
            assert re.search(rf"\| {kind} \| \d+ \| [0-9.na]+ \| [0-9.na]+ \| ", out), out
    assert rows["with"][0] == rows["without"][0] > 0  # the same cells
    assert rows["with"][1] > 0.0 and rows["without"][1] == 0.0  # the gap is the dropout
    assert rows["with"][2] == rows["without"][2] > 0.0  # eval-mode BEVs: the same


def test_velocity_probe_tool(tiny_cfg, tmp_path):
    cfg = tiny_cfg(T2)
    config = tmp_path / "t2.py"
    cfg.dump(str(config))
    command = [sys.executable, "tools/velocity_probe.py", str(config), "none"]
    command += ["--data-root", cfg.data_root, "--epochs", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    counts = re.search(r"train (\d+) \((\d+) boxes\), val (\d+) \((\d+) boxes\)", out)
    assert counts and all(int(v) > 0 for v in counts.groups()), out
    number = r"([0-9.]+)"
    for name in ("past, current", "current, current"):
        assert re.search(rf"\| {name} \| {number} \| {number} \| {number} \|", out), out
    zero = re.search(rf"\| velocity 0 \| \| {number} \| {number} \|", out)
    assert zero and float(zero.group(1)) > 0, out
    one_frame = tmp_path / "t1.py"
    tiny_cfg("projects/configs/bevformerv2/bevformerv2_tiny_320x128_t1_12ep.py").dump(
        str(one_frame)
    )
    command[2] = str(one_frame)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "needs a two-frame fusion config" in done.stderr, done.stderr
