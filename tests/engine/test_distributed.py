"""Two-process CPU training and evaluation (torchrun, gloo) through tools/dist_*.sh.

The tiny config trains one epoch on 2 processes (2 iterations: 4 training samples, 1 per
process), then the checkpoint is evaluated on 2 processes and on 1: the two submissions must
hold the same sample tokens with the same boxes, i.e. the distributed collection is complete,
ordered and free of the sampler's padding duplicates (4 validation samples, 2 per rank).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from tiny import REPO, TINY_CONFIG, TINY_OPTIONS  # noqa: I001  (tests/engine is on sys.path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _options(**extra) -> list[str]:
    def fmt(v):
        return f"({','.join(map(str, v))})" if isinstance(v, tuple) else str(v)

    return ["--cfg-options", *(f"{k}={fmt(v)}" for k, v in {**TINY_OPTIONS, **extra}.items())]


def _run(cmd: list[str], **env) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **env)
    proc = subprocess.run(cmd, cwd=REPO, env=environ, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_process_train_and_eval_match_one_process(tiny_dataroot, tmp_path):
    root = ["--data-root", str(tiny_dataroot)]
    work = tmp_path / "train"
    _run(
        ["bash", "tools/dist_train.sh", TINY_CONFIG, "2", *root, "--work-dir", str(work),
         *_options(**{"train_cfg.max_epochs": 1})],
        MASTER_PORT=str(_free_port()),
    )  # fmt: skip
    ckpt = (work / "last_checkpoint").read_text().strip()
    assert ckpt.endswith("epoch_1.pth")
    logs = list(work.glob("*/vis_data/scalars.json"))
    assert logs, "no scalar log of the training run"

    two = tmp_path / "two" / "results.json"
    one = tmp_path / "one" / "results.json"
    _run(
        ["bash", "tools/dist_test.sh", TINY_CONFIG, ckpt, "2", *root, "--eval", "--out", str(two),
         "--work-dir", str(tmp_path / "two"), *_options()],
        MASTER_PORT=str(_free_port()),
    )  # fmt: skip
    proc = _run(
        [sys.executable, "tools/test.py", TINY_CONFIG, ckpt, *root, "--eval", "--out", str(one),
         "--work-dir", str(tmp_path / "one"), "--show-dir", str(tmp_path / "vis"), *_options()]
    )  # fmt: skip
    assert "NDS" in proc.stdout and "mAOE" in proc.stdout  # the metric table was printed
    assert len(list((tmp_path / "vis").glob("*.png"))) == 4

    a, b = json.loads(two.read_text()), json.loads(one.read_text())
    assert len(a["results"]) == 4
    assert a["results"] == b["results"]
    assert sum(len(v) for v in a["results"].values()) > 0  # there are boxes to compare
    for d in (tmp_path / "two", tmp_path / "one"):
        flat = json.loads((d / "metrics_summary_flat.json").read_text())
        assert 0.0 <= flat["NDS"] <= 1.0
    assert json.loads((tmp_path / "two" / "metrics_summary_flat.json").read_text()) == json.loads(
        (tmp_path / "one" / "metrics_summary_flat.json").read_text()
    )
