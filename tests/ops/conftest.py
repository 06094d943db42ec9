"""Fixtures for the operator tests: the compiled extension (built once, cached on disk)."""

from __future__ import annotations

import pytest
import torch

from ops.build import load_extension


@pytest.fixture(scope="session")
def ext():
    """The compiled extension; the kernel tests fail where it cannot be built."""
    module = load_extension()
    assert module is not None, "the C++ extension could not be built (is a C++ compiler on PATH?)"
    return module


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
