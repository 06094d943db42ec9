"""A NaN or infinite loss term stops training with the term's name, not later in the optimizer."""

from __future__ import annotations

import pytest
import torch

from bevformer.models.losses import check_finite_losses


def test_a_non_finite_loss_term_is_named():
    check_finite_losses({"loss_cls": torch.tensor(1.0), "loss_bbox": torch.tensor([0.5, 2.0])})
    losses = {"loss_cls": torch.tensor(0.7), "loss_bbox": torch.tensor([0.5, float("nan")])}
    with pytest.raises(FloatingPointError, match=r"loss term 'loss_bbox' is not finite .*loss_cls"):
        check_finite_losses(losses)
    with pytest.raises(FloatingPointError, match="'d0.loss_cls' is not finite"):
        check_finite_losses({"d0.loss_cls": torch.tensor(float("inf"))})
