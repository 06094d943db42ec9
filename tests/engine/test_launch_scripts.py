"""The cluster launch scripts start torchrun with the right topology (fake srun/python)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"

FAKE_SRUN = """#!/usr/bin/env bash
# records its options, then runs the command as node 1 of a 2-node allocation
opts=()
while [[ "$1" == --* ]]; do opts+=("$1"); shift; done
printf '%s\\n' "${opts[@]}" > "$RECORD.srun"
SLURM_NNODES=2 SLURM_NODEID=1 SLURM_JOB_NODELIST='node[01-02]' exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
printf 'node01\\nnode02\\n'
"""
FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$RECORD.python"
"""


def _run(tmp_path: Path, script: str, *args: str, **env: str) -> tuple[list[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("python", FAKE_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    record = tmp_path / "record"
    full_env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD": str(record),
        "PYTHON": str(bin_dir / "python"),
        **env,
    }
    subprocess.run(["bash", str(TOOLS / script), *args], env=full_env, check=True)
    srun = Path(f"{record}.srun")
    srun_opts = srun.read_text().split() if srun.exists() else []
    return srun_opts, Path(f"{record}.python").read_text().splitlines()


def test_slurm_train_starts_torchrun_per_node(tmp_path):
    srun, python = _run(
        tmp_path,
        "slurm_train.sh",
        *("gpu", "bev", "cfg.py", "work_dirs/x", "--amp"),
        GPUS="16",
        MAX_RESTARTS="3",
    )
    assert "--nodes=2" in srun and "--ntasks-per-node=1" in srun and "--gres=gpu:8" in srun
    assert "--partition=gpu" in srun and "--job-name=bev" in srun
    assert python[:2] == ["-m", "torch.distributed.run"]
    for expected in ("--nnodes=2", "--node_rank=1", "--master_addr=node01", "--max-restarts=3"):
        assert expected in python, python
    assert "--nproc_per_node=8" in python
    script = python.index(str(TOOLS / "train.py"))
    expected = ["cfg.py", "--work-dir", "work_dirs/x", "--amp", "--launcher", "pytorch"]
    assert python[script + 1 :] == expected


def test_slurm_test_and_dist_scripts(tmp_path):
    _, python = _run(tmp_path, "slurm_test.sh", "gpu", "ev", "cfg.py", "a.pth", "--eval", GPUS="4")
    assert "--nproc_per_node=4" in python and "--master_port=29501" in python
    assert python[-5:] == ["cfg.py", "a.pth", "--eval", "--launcher", "pytorch"]
    _, python = _run(tmp_path, "dist_train.sh", "cfg.py", "2", MAX_RESTARTS="1")
    assert "--max-restarts=1" in python and "--nproc_per_node=2" in python
    _, python = _run(tmp_path, "dist_test.sh", "cfg.py", "a.pth", "2")
    assert "--max-restarts=0" in python
