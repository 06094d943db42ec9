"""``--resume`` checks the checkpoint before restoring anything: weights-only files, another
model (a shape, a layer count), another optimizer layout, random bytes and truncated files are
refused with a message saying what differs, before the first training step, with the model's
weights, the optimizer state and the counters as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper

from backbones.checkpoint import read_checkpoint
from bevformer.checkpoint import CheckpointReadError
from bevformer.engine.launch import build_runner
from bevformer.engine.runner import ResumeCheckError, check_resume_checkpoint

# a tensor of the detector that every variant of the tiny config has (the BEV queries)
_SHAPE_KEY = "bev.encoder.bev_embedding.weight"


class StepProbe(Hook):
    """Counts training iterations."""

    priority = "VERY_HIGH"

    def __init__(self) -> None:
        self.steps = 0

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.steps += 1


def _train_one(cfg, work_dir: Path) -> Path:
    cfg.train_cfg.max_iters = 1
    runner = build_runner(cfg, work_dir=str(work_dir))
    runner.train()
    return work_dir / "iter_1.pth"


@pytest.fixture(scope="module")
def good_checkpoint(iteration_cfg, tmp_path_factory) -> Path:
    """A checkpoint of the tiny config after one training iteration."""
    return _train_one(iteration_cfg(2), tmp_path_factory.mktemp("good"))


def _resume_fails(cfg, work_dir: Path, resume, error: type[Exception]) -> str:
    """Resume and expect ``error``; the model, the optimizer and the counters must be as the
    run built them, and no training step may have run. Returns the message."""
    runner = build_runner(cfg, work_dir=str(work_dir), resume=resume)
    before = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    probe = StepProbe()
    runner.register_hook(probe)
    with pytest.raises(error) as info:
        runner.train()
    assert probe.steps == 0
    assert runner.iter == 0 and runner.epoch == 0
    after = runner.model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed although the resume was refused"
    assert not runner.optim_wrapper.optimizer.state  # no optimizer state restored
    return str(info.value)


@pytest.mark.parametrize("layout", ["state_dict", "bare"])
def test_weights_only_points_to_load_from(iteration_cfg, good_checkpoint, tmp_path, layout):
    state = read_checkpoint(good_checkpoint)["state_dict"]
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": state} if layout == "state_dict" else state, path)
    message = _resume_fails(iteration_cfg(2), tmp_path / "run", str(path), ResumeCheckError)
    assert message.splitlines()[0] == (
        f"{path} holds weights only (no optimizer state / meta), so a run cannot resume from "
        f"it; start a new run from its weights with --load-from {path}"
    )


def test_auto_resume_runs_the_same_checks(iteration_cfg, good_checkpoint, tmp_path):
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    path = work_dir / "iter_1.pth"
    torch.save({"state_dict": read_checkpoint(good_checkpoint)["state_dict"]}, path)
    (work_dir / "last_checkpoint").write_text(str(path))
    message = _resume_fails(iteration_cfg(2), work_dir, True, ResumeCheckError)
    assert "holds weights only" in message and f"--load-from {path}" in message
    assert "last_checkpoint" in message  # says where the path came from


def test_one_differing_shape_is_named(iteration_cfg, good_checkpoint, tmp_path):
    checkpoint = read_checkpoint(good_checkpoint)
    weight = checkpoint["state_dict"][_SHAPE_KEY]
    checkpoint["state_dict"][_SHAPE_KEY] = torch.zeros(weight.shape[0] + 1, *weight.shape[1:])
    path = tmp_path / "other_shape.pth"
    torch.save(checkpoint, path)
    message = _resume_fails(iteration_cfg(2), tmp_path / "run", str(path), ResumeCheckError)
    first = message.splitlines()[0]
    assert first.startswith(f"checkpoint {path} does not fit this model")
    assert "another config" in first and "1 shape mismatches" in first
    assert "0 missing keys" in first and "0 unexpected keys" in first
    shape = list(weight.shape)
    wider = [shape[0] + 1, *shape[1:]]
    assert f"{_SHAPE_KEY}: model {shape} vs checkpoint {wider}" in message


def test_fewer_layers_is_refused_before_the_first_step(iteration_cfg, tmp_path):
    deeper = _train_one(iteration_cfg(2, **{"model.bev.encoder.num_layers": 2}), tmp_path / "deep")
    message = _resume_fails(iteration_cfg(2), tmp_path / "run", str(deeper), ResumeCheckError)
    first = message.splitlines()[0]
    assert first.startswith(f"checkpoint {deeper} does not fit this model")
    assert "0 missing keys" in first and "0 shape mismatches" in first
    assert "unexpected keys" in message and "bev.encoder.layers.1." in message


def test_another_optimizer_layout_is_refused(iteration_cfg, good_checkpoint, tmp_path):
    cfg = iteration_cfg(2)  # trained with paramwise_cfg: one parameter group per parameter
    cfg.optim_wrapper.pop("paramwise_cfg")  # resumed with one group for all
    message = _resume_fails(cfg, tmp_path / "run", str(good_checkpoint), ResumeCheckError)
    assert message.splitlines()[0].startswith(
        f"checkpoint {good_checkpoint}: its optimizer state does not fit the optimizer this "
        "config builds"
    )
    assert "parameter groups in the checkpoint, 1 in the optimizer the config builds" in message


def test_parameters_in_another_order_are_refused(iteration_cfg, good_checkpoint, tmp_path):
    """A file whose model had its parameters in another order (the keys fit): the optimizer
    state, restored by position, would give each tensor another one's moments."""
    checkpoint = read_checkpoint(good_checkpoint)
    state = checkpoint["state_dict"]
    keys = list(state)
    first, second = keys.index("img_neck.lateral_convs.0.conv.weight"), keys.index(_SHAPE_KEY)
    keys[first], keys[second] = keys[second], keys[first]
    checkpoint["state_dict"] = {k: state[k] for k in keys}
    path = tmp_path / "reordered.pth"
    torch.save(checkpoint, path)
    message = _resume_fails(iteration_cfg(2), tmp_path / "run", str(path), ResumeCheckError)
    assert message.splitlines()[0].startswith(
        f"checkpoint {path}: its parameters are in another order than this model's"
    )
    assert f"{_SHAPE_KEY} in the checkpoint, img_neck.lateral_convs.0.conv.weight in the " in (
        message
    )
    assert f"--load-from {path}" in message


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_not_a_checkpoint(iteration_cfg, good_checkpoint, tmp_path, damage):
    path = tmp_path / "broken.pth"
    data = good_checkpoint.read_bytes()
    if damage == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    else:
        path.write_bytes(data[: len(data) // 2])
    message = _resume_fails(iteration_cfg(2), tmp_path / "run", str(path), CheckpointReadError)
    assert f"not a checkpoint (or truncated): {path}" in message.splitlines()[0]


# --- check_resume_checkpoint on a small model (no training run) ---------------------------


def _small(groups: int = 1) -> tuple[torch.nn.Module, OptimWrapper]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    param_groups = [{"params": params}] if groups == 1 else [{"params": [p]} for p in params]
    return model, OptimWrapper(torch.optim.AdamW(param_groups, lr=1e-3))


def _checkpoint(model: torch.nn.Module, wrapper: OptimWrapper) -> dict:
    model(torch.ones(1, 3)).sum().backward()
    wrapper.step()
    return {
        "meta": {"epoch": 0, "iter": 1, "mmengine_version": "0.10.7"},
        "state_dict": model.state_dict(),
        "optimizer": wrapper.state_dict(),
        "message_hub": {},
        "param_schedulers": [{"last_epoch": 1}],
    }


def test_check_accepts_its_own_checkpoint():
    model, wrapper = _small()
    check_resume_checkpoint(_checkpoint(model, wrapper), "ok.pth", model, wrapper, [object()])
    fresh_model, fresh_wrapper = _small()  # same layout, other values: accepted too
    check_resume_checkpoint(_checkpoint(model, wrapper), "ok.pth", fresh_model, fresh_wrapper)


def test_check_names_optimizer_state_shapes():
    model, wrapper = _small()
    checkpoint = _checkpoint(model, wrapper)
    state = checkpoint["optimizer"]["state"]
    state[0]["exp_avg"] = torch.zeros(5, 3)  # the first Linear's weight is 4 x 3
    with pytest.raises(ResumeCheckError, match=r"state 'exp_avg' has shape \[5, 3\]"):
        check_resume_checkpoint(checkpoint, "ckpt.pth", model, wrapper)


def test_check_names_parameters_per_group():
    model, wrapper = _small(groups=4)
    checkpoint = _checkpoint(model, wrapper)
    groups = checkpoint["optimizer"]["param_groups"]
    groups[0]["params"], groups[1]["params"] = groups[0]["params"] + groups[1]["params"], []
    with pytest.raises(ResumeCheckError) as info:
        check_resume_checkpoint(checkpoint, "ckpt.pth", model, wrapper)
    message = str(info.value)
    assert "group 0: 2 parameters in the checkpoint, 1 in the config's optimizer" in message
    assert "group 1: 0 parameters in the checkpoint, 1 in the config's optimizer" in message


def test_check_counts_schedulers_and_requires_meta_keys():
    model, wrapper = _small()
    checkpoint = _checkpoint(model, wrapper)
    with pytest.raises(ResumeCheckError, match="1 parameter schedulers in the checkpoint, 2"):
        check_resume_checkpoint(checkpoint, "ckpt.pth", model, wrapper, [object(), object()])
    del checkpoint["meta"]["iter"]
    with pytest.raises(ResumeCheckError, match=r"lacks meta\['iter'\]"):
        check_resume_checkpoint(checkpoint, "ckpt.pth", model, wrapper)
    with pytest.raises(ResumeCheckError, match="holds a list, not a checkpoint dict"):
        check_resume_checkpoint([1, 2], "ckpt.pth", model, wrapper)


def test_check_hints_at_foreign_checkpoints():
    model, wrapper = _small()
    checkpoint = _checkpoint(model, wrapper)
    checkpoint["meta"] = {"epoch": 24, "iter": 1000, "mmcv_version": "1.4.0"}
    checkpoint["state_dict"] = {f"module.{k}x": v for k, v in checkpoint["state_dict"].items()}
    with pytest.raises(ResumeCheckError) as info:
        check_resume_checkpoint(checkpoint, "official.pth", model, wrapper)
    message = str(info.value)
    assert "4 missing keys, 4 unexpected keys, 0 shape mismatches" in message
    assert "not written by mmengine" in message and "--load-from official.pth" in message
