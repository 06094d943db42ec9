"""Fixtures for the operator tests: the compiled extension (built once, cached on disk)."""

from __future__ import annotations

import pytest
import torch

from ops.build import load_extension


@pytest.fixture(scope="session")
def ext():
    """The compiled extension; the kernel tests are skipped where it cannot be built."""
    module = load_extension()
    if module is None:
        pytest.skip("the C++ extension could not be built (no compiler?)")
    return module


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
