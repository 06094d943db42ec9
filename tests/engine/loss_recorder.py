"""A training hook for the engine tests: every loss term of every iteration."""

from __future__ import annotations

from mmengine.hooks import Hook


class LossRecorder(Hook):
    """Records every loss term of every training iteration, by iteration number (1-based)."""

    priority = "LOWEST"

    def __init__(self) -> None:
        self.losses: dict[int, dict[str, float]] = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses[runner.iter + 1] = {k: float(v.detach()) for k, v in outputs.items()}
