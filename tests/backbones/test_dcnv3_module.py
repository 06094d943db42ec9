"""DCNv3 module arguments: only size-preserving geometries are accepted, up front."""

from __future__ import annotations

import pytest
import torch

from backbones.dcnv3 import DCNv3


@pytest.mark.parametrize(
    "kw",
    [dict(stride=2), dict(pad=0), dict(pad=2), dict(kernel_size=5, pad=1), dict(dilation=2)],
    ids=["stride2", "pad0", "pad2", "k5pad1", "dil2pad1"],
)
def test_size_changing_geometry_is_refused_in_the_constructor(kw):
    with pytest.raises(ValueError, match="keep the input size: supported are stride=1"):
        DCNv3(channels=8, group=2, core_op="DCNv3_pytorch", **kw)


@pytest.mark.parametrize(
    "kw", [dict(), dict(kernel_size=5, pad=2), dict(dilation=2, pad=2)], ids=["k3", "k5", "dil2"]
)
def test_size_preserving_geometry_keeps_the_shape(kw):
    module = DCNv3(channels=8, group=2, core_op="DCNv3_pytorch", **kw)
    x = torch.randn(1, 7, 9, 8)
    assert module(x).shape == (1, 7, 9, 8)
