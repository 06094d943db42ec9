"""The config's ``sync_bn``: BatchNorm -> SyncBatchNorm for multi-GPU training, plain BatchNorm
for one process and for CPU processes (torch's SyncBatchNorm refuses CPU tensors in training
once a process group exists, which the single-process gloo test shows)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from bevformer.engine.sync_bn import apply_sync_bn, count_batchnorms, sync_bn_mode
from bevformer.models.temporal import ResNetFusion


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 6), nn.BatchNorm1d(6)),
    )
    model[1].running_mean.fill_(0.5)
    return model


def test_multi_gpu_run_converts_every_batchnorm_keeping_its_parameters():
    model = _model()
    weight, running_mean = model[1].weight, model[1].running_mean.clone()
    cfg = {"sync_bn": "torch"}
    out = apply_sync_bn(model, cfg, world_size=2, device_type="cuda")
    assert count_batchnorms(out) == (0, 2)
    assert isinstance(out[1], nn.SyncBatchNorm) and isinstance(out[2][2], nn.SyncBatchNorm)
    assert out[1].weight is weight  # the same Parameter: optimiser and checkpoint keys unchanged
    torch.testing.assert_close(out[1].running_mean, running_mean)
    assert set(out.state_dict()) == set(_model().state_dict())
    assert cfg["sync_bn"] == "torch"  # mmengine's own conversion then re-wraps the same layers


@pytest.mark.parametrize("value", [True, "torch"])
def test_one_process_keeps_plain_batchnorm(value):
    cfg = {"sync_bn": value}
    out = apply_sync_bn(_model(), cfg, world_size=1, device_type="cuda")
    assert count_batchnorms(out) == (2, 0) and cfg["sync_bn"] == value


def test_cpu_processes_keep_plain_batchnorm_and_mmengine_is_told_so():
    cfg = {"sync_bn": "torch"}
    out = apply_sync_bn(_model(), cfg, world_size=2, device_type="cpu")
    assert count_batchnorms(out) == (2, 0)
    assert cfg["sync_bn"] is None  # else mmengine's Runner.wrap_model would convert


def test_sync_bn_off_and_test_runs_leave_the_model_alone():
    cfg = {"sync_bn": None}
    assert count_batchnorms(apply_sync_bn(_model(), cfg, world_size=8, device_type="cuda")) == (
        2,
        0,
    )
    cfg = {"sync_bn": "torch"}
    out = apply_sync_bn(_model(), cfg, world_size=8, training=False, device_type="cuda")
    assert count_batchnorms(out) == (2, 0) and cfg["sync_bn"] == "torch"


def test_unknown_value_is_rejected():
    assert sync_bn_mode(False) is None and sync_bn_mode(True) == "torch"
    with pytest.raises(ValueError, match="mmcv"):
        apply_sync_bn(_model(), {"sync_bn": "mmcv"}, world_size=2, device_type="cuda")


def test_syncbn_layers_are_reverted_on_cpu_where_torch_cannot_train_them(tmp_path):
    """A model built with norm="SyncBN" fails to train on CPU once a process group exists;
    after apply_sync_bn it trains (one gloo process stands in for a CPU run)."""
    fusion = ResNetFusion(in_channels=8, out_channels=4, num_layers=1, norm="SyncBN").train()
    assert count_batchnorms(fusion) == (0, 2)
    bevs = [torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)]
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            fusion(bevs)
        cfg = {"sync_bn": "torch"}
        fusion = apply_sync_bn(fusion, cfg, world_size=1, distributed=True, device_type="cpu")
        assert count_batchnorms(fusion) == (2, 0) and cfg["sync_bn"] is None
        out = fusion(bevs)
        assert out.shape == (2, 9, 4) and torch.isfinite(out).all()
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_converted_model_trains_on_cuda():
    model = apply_sync_bn(_model(), {"sync_bn": "torch"}, world_size=2).cuda().train()
    assert count_batchnorms(model) == (0, 2)
    # without a process group SyncBatchNorm computes the local statistics, as BatchNorm does
    reference = _model().cuda().train()
    x = torch.randn(4, 3, 5, 5, device="cuda")
    torch.testing.assert_close(model(x), reference(x))
