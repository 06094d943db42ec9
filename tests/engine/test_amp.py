"""``tools/train.py --amp`` on a machine without CUDA: bfloat16 autocast on the CPU
(``bevformer.engine.amp``). The wrapper runs the forward pass in bfloat16 and keeps parameters,
gradients and optimizer state in float32; a run built with ``amp=True`` trains through it."""

from __future__ import annotations

import torch
from mmengine.hooks import Hook
from torch import nn

from bevformer.engine import launch
from bevformer.engine.amp import CPUBFloat16OptimWrapper, cpu_supports_bfloat16
from bevformer.engine.launch import build_runner

T2_HYBRID = "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2-hybrid_12ep.py"


def test_the_wrapper_autocasts_the_forward_pass_and_steps_float32_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    before = [p.detach().clone() for p in model.parameters()]
    wrapper = CPUBFloat16OptimWrapper(optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2))
    x = torch.randn(32, 8)
    with wrapper.optim_context(model):
        out = model(x)
        loss = out.float().square().mean()
    assert out.dtype == torch.bfloat16  # the linear layers ran in bfloat16
    wrapper.update_params(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert model(x).dtype == torch.float32  # outside the context: float32 again


class _LinearOutputDtype(Hook):
    """The dtype of the first decoder linear layer's output in each training iteration."""

    def __init__(self) -> None:
        self.dtypes: list[torch.dtype] = []
        self.handle = None

    def before_train(self, runner) -> None:
        layer = next(m for m in runner.model.pts_bbox_head.modules() if isinstance(m, nn.Linear))
        self.handle = layer.register_forward_hook(lambda m, i, o: self.dtypes.append(o.dtype))

    def after_train(self, runner) -> None:
        self.handle.remove()


def test_a_run_built_with_amp_on_the_cpu_trains_in_bfloat16(iteration_cfg, tmp_path, monkeypatch):
    # the recipe's temporal variant: perspective head, hybrid queries, fusion of two frames
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU path, GPU or not
    monkeypatch.setattr(launch, "cpu_supports_bfloat16", lambda: True)  # any CPU can run it
    runner = build_runner(iteration_cfg(2, T2_HYBRID), work_dir=str(tmp_path), amp=True)
    probe = _LinearOutputDtype()
    runner.register_hook(probe)
    runner.train()
    assert isinstance(runner.optim_wrapper, CPUBFloat16OptimWrapper)
    assert probe.dtypes and set(probe.dtypes) == {torch.bfloat16}
    params = list(runner.model.parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    log = next(tmp_path.rglob("*.log")).read_text()
    assert "mixed precision: bfloat16 autocast on the CPU" in log
    # its checkpoint resumes in float32 (the wrapper's state is OptimWrapper's)
    runner = build_runner(iteration_cfg(3, T2_HYBRID), work_dir=str(tmp_path), resume=True)
    runner.train()
    assert runner.iter == 3 and type(runner.optim_wrapper).__name__ == "OptimWrapper"
    assert "precision: float32" in sorted(tmp_path.rglob("*.log"))[-1].read_text()


def test_bfloat16_instructions_are_what_the_cpu_reports(monkeypatch):
    for found, expected in (
        ({"avx512": True, "avx512_bf16": False, "amx_bf16": False}, False),  # emulated: refused
        ({"avx512": True, "avx512_bf16": True, "amx_bf16": False}, True),
        ({"avx512_bf16": False, "amx_bf16": True}, True),
        ({}, False),
    ):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda found=found: found)
        assert cpu_supports_bfloat16() is expected
