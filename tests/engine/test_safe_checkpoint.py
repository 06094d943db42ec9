"""The checkpoint readers run no code from a file and reject files that are no checkpoint."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from backbones.checkpoint import (
    CheckpointReadError,
    SkippedGlobal,
    read_checkpoint,
    read_pickle,
)
from bevformer.checkpoint import load_weights


class TrainerConfig:
    """Stands for an mmcv ``Config`` pickled into a checkpoint's ``meta``."""

    def __init__(self) -> None:
        self.lr = 2e-4


class MakesAFile:
    """Unpickling this (normally) runs ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plain_checkpoint_reads_with_weights_only(tmp_path):
    path = tmp_path / "plain.pth"
    sd = OrderedDict(w=torch.randn(3, 4), b=torch.arange(3))
    torch.save({"state_dict": sd, "meta": {"epoch": 3}}, path)
    out = read_checkpoint(path)
    assert torch.equal(out["state_dict"]["w"], sd["w"])
    assert out["meta"] == {"epoch": 3}


def test_mmcv_style_meta_objects_become_placeholders(tmp_path):
    path = tmp_path / "mmcv.pth"
    base = torch.arange(12.0).reshape(3, 4)
    ckpt = {
        "state_dict": OrderedDict(
            view=base[:, 1:3],  # a strided view into a shared storage
            half=torch.ones(2, dtype=torch.float16),
            bf16=torch.full((2,), 1.5, dtype=torch.bfloat16),
            empty=torch.zeros(0),
        ),
        "meta": {
            "config": TrainerConfig(),
            "scalar": np.float64(0.25),
            "array": np.arange(4, dtype=np.int32),
            "ordered": OrderedDict(a=1),
        },
    }
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match=r"not loaded.*test_safe_checkpoint\.TrainerConfig"):
        out = read_checkpoint(path)
    sd = out["state_dict"]
    assert torch.equal(sd["view"], base[:, 1:3]) and sd["view"].stride() == (4, 1)
    assert sd["half"].dtype == torch.float16 and sd["bf16"].tolist() == [1.5, 1.5]
    assert sd["empty"].shape == (0,)
    meta = out["meta"]
    assert isinstance(meta["config"], SkippedGlobal)
    assert meta["config"].global_name.endswith("test_safe_checkpoint.TrainerConfig")
    assert not isinstance(meta["config"], TrainerConfig)
    assert meta["scalar"] == 0.25 and meta["array"].tolist() == [0, 1, 2, 3]
    assert meta["ordered"] == OrderedDict(a=1)


def test_malicious_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": MakesAFile(marker)}, path)
    before = _digest(path)
    with pytest.warns(UserWarning, match=r"posix\.system|os\.system|nt\.system"):
        out = read_checkpoint(path)
    assert not marker.exists()
    assert isinstance(out["payload"], SkippedGlobal)
    assert torch.equal(out["state_dict"]["w"], torch.ones(2))
    assert _digest(path) == before


def test_legacy_format_with_numpy_meta_reads_and_with_objects_is_refused(tmp_path):
    """torch's pre-zip format (``_use_new_zipfile_serialization=False``): NumPy in ``meta``
    is read; any other object is a clear error and never runs."""
    legacy = {
        "meta": {"x": np.float64(1.5), "hist": np.arange(3)},
        "state_dict": {"w": torch.ones(2)},
    }
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path, _use_new_zipfile_serialization=False)
    out = read_checkpoint(path)
    assert out["meta"]["x"] == 1.5 and out["meta"]["hist"].tolist() == [0, 1, 2]
    assert torch.equal(out["state_dict"]["w"], torch.ones(2))

    marker = tmp_path / "pwned"
    evil = tmp_path / "legacy_evil.pth"
    torch.save({"payload": MakesAFile(marker)}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointReadError, match=r"legacy \(pre-1.6, non-zip\) format .*system"):
        read_checkpoint(evil)
    assert not marker.exists()


def test_malicious_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "nuscenes_infos_temporal_train.pkl"
    infos = {"infos": [{"token": "a", "gt_boxes": np.zeros((1, 7))}], "metadata": {"v": 1}}
    path.write_bytes(pickle.dumps({**infos, "x": MakesAFile(marker)}))
    with pytest.warns(UserWarning, match="system"):
        out = read_pickle(path)
    assert not marker.exists()
    assert out["infos"][0]["token"] == "a" and out["infos"][0]["gt_boxes"].shape == (1, 7)
    assert out["metadata"] == {"v": 1}


@pytest.mark.parametrize("kind", ["random", "truncated", "empty"])
def test_not_a_checkpoint(tmp_path, kind):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, good)
    path = tmp_path / f"{kind}.pth"
    data = {
        "random": np.random.default_rng(0).bytes(4096),
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "empty": b"",
    }[kind]
    path.write_bytes(data)
    with pytest.raises(CheckpointReadError, match=rf"not a checkpoint \(or truncated\): .*{kind}"):
        read_checkpoint(path)
    with pytest.raises(CheckpointReadError, match="not a pickle file"):
        read_pickle(path)
    assert path.read_bytes() == data  # nothing written


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.pth"):
        read_checkpoint(tmp_path / "none.pth")
    with pytest.raises(FileNotFoundError, match="none.pkl"):
        read_pickle(tmp_path / "none.pkl")


def test_load_weights_of_a_malicious_file_loads_tensors_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    model = torch.nn.Linear(3, 2)
    source = torch.nn.Linear(3, 2)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": source.state_dict(), "meta": MakesAFile(marker)}, path)
    report = load_weights(model, str(path), strict=True)
    assert not marker.exists()
    assert sorted(report.loaded) == ["bias", "weight"]
    assert any("system" in g for g in report.skipped_globals)
    assert "objects not loaded" in report.summary()
    assert torch.equal(model.weight, source.weight)


def test_load_weights_rejects_bad_files_and_keeps_the_weights(tmp_path):
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "broken.pth"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointReadError, match="not a checkpoint"):
        load_weights(model, str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
