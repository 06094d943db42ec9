"""Streaming evaluation: scenes in order, the temporal state carried between samples.

A detector with ``temporal="streaming"`` (BEVFormer v1-style temporal self-attention) attends
to the BEV of the previous keyframe, which it returns as a ``TemporalState`` and receives back
with the next call. Evaluating it needs every scene's keyframes in time order, one sample per
batch, in one process. :class:`SceneSequentialSampler` gives each rank whole scenes (scenes
are dealt to ranks by size, largest first, each to the rank with the fewest samples so far)
and pads the shorter ranks by repeating their last sample, so every rank has the same length;
:class:`StreamingTestLoop` carries the state and evaluates with the padded total. The metric
keeps the first result of each sample token, so a padding repeat never replaces a real one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from mmengine.dist import get_dist_info
from mmengine.model import is_model_wrapper
from mmengine.runner import TestLoop, ValLoop
from torch.utils.data import Sampler

__all__ = ["SceneSequentialSampler", "StreamingTestLoop", "StreamingValLoop", "scene_blocks"]


def scene_blocks(scene_tokens: Sequence[str]) -> list[list[int]]:
    """Runs of equal consecutive scene tokens -> lists of dataset indices."""
    blocks: list[list[int]] = []
    for i, tok in enumerate(scene_tokens):
        if blocks and scene_tokens[blocks[-1][-1]] == tok:
            blocks[-1].append(i)
        else:
            blocks.append([i])
    return blocks


class SceneSequentialSampler(Sampler):
    """Whole scenes per rank, each in time order; ranks padded to equal length.

    The dataset must keep a scene's keyframes contiguous and time-sorted and expose ``infos``
    and ``indices`` (``NuScenesTemporalDataset`` does). ``seed`` is accepted for mmengine's
    sampler protocol and unused (the order is fixed).
    """

    def __init__(
        self,
        dataset: Any,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        dist_rank, dist_world = get_dist_info()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world if world_size is None else world_size
        scenes = [dataset.infos[i]["scene_token"] for i in dataset.indices]
        blocks = sorted(scene_blocks(scenes), key=len, reverse=True)
        per_rank: list[list[list[int]]] = [[] for _ in range(self.world_size)]
        for block in blocks:
            target = min(range(self.world_size), key=lambda r: sum(map(len, per_rank[r])))
            per_rank[target].append(block)
        # keep each rank's scenes in dataset order
        mine = sorted(per_rank[self.rank], key=lambda b: b[0])
        self.indices = [i for block in mine for i in block]
        self.length = max(sum(map(len, r)) for r in per_rank)
        if self.indices:
            self.indices += [self.indices[-1]] * (self.length - len(self.indices))
        elif self.length:
            # more ranks than scenes: repeat the dataset's first sample (dropped as duplicate)
            self.indices = [0] * self.length

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Order is fixed; accepted for mmengine's sampler protocol."""


def _check_streaming_loader(loader: Any) -> None:
    if loader.batch_size != 1:
        raise ValueError(
            f"streaming evaluation needs batch_size=1, got {loader.batch_size}; "
            "tools/test.py sets it for temporal='streaming' models"
        )
    if not isinstance(loader.sampler, SceneSequentialSampler):
        raise ValueError(
            "streaming evaluation needs the SceneSequentialSampler (scenes in order); got "
            f"{type(loader.sampler).__name__}"
        )


class _StreamingMixin:
    """Shared ``run``/``run_iter`` of the streaming test and validation loops."""

    runner: Any
    dataloader: Any
    evaluator: Any

    def _stream(self, stage: str) -> dict:
        _check_streaming_loader(self.dataloader)
        self.runner.call_hook(f"before_{stage}")
        self.runner.call_hook(f"before_{stage}_epoch")
        self.runner.model.eval()
        self._state = None
        for idx, data_batch in enumerate(self.dataloader):
            self.run_iter(idx, data_batch)
        _, world_size = get_dist_info()
        metrics = self.evaluator.evaluate(len(self.dataloader.sampler) * world_size)
        self.runner.call_hook(f"after_{stage}_epoch", metrics=metrics)
        self.runner.call_hook(f"after_{stage}")
        return metrics

    @torch.no_grad()
    def _stream_iter(self, stage: str, idx: int, data_batch: dict) -> None:
        self.runner.call_hook(f"before_{stage}_iter", batch_idx=idx, data_batch=data_batch)
        model = self.runner.model
        if is_model_wrapper(model):
            model = model.module
        inputs = dict(data_batch, prev_state=self._state, return_state=True)
        outputs, self._state = model.test_step(inputs)
        self.evaluator.process(data_samples=outputs, data_batch=data_batch)
        self.runner.call_hook(
            f"after_{stage}_iter", batch_idx=idx, data_batch=data_batch, outputs=outputs
        )


class StreamingTestLoop(_StreamingMixin, TestLoop):
    """``TestLoop`` for ``temporal="streaming"`` detectors (see the module docstring)."""

    def run(self) -> dict:
        return self._stream("test")

    def run_iter(self, idx: int, data_batch: dict) -> None:
        self._stream_iter("test", idx, data_batch)


class StreamingValLoop(_StreamingMixin, ValLoop):
    """``ValLoop`` for ``temporal="streaming"`` detectors (see the module docstring)."""

    def run(self) -> dict:
        return self._stream("val")

    def run_iter(self, idx: int, data_batch: dict) -> None:
        self._stream_iter("val", idx, data_batch)
