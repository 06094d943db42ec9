"""Shared fixtures of the data tests.

``synthetic_dataroot``: a tiny synthetic nuScenes dataroot (2 scenes x 4 keyframes, 400x225
images, seed 0; the second scene is the ``mini_val`` scene ``scene-0103``), generated once per
test session. Returns the dataroot ``Path``; tables are under ``<root>/v1.0-mini``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SYNTHETIC_KWARGS = dict(scenes=2, samples_per_scene=4, image_size=(400, 225), seed=0, workers=1)


@pytest.fixture(scope="session")
def synthetic_kwargs() -> dict:
    """The ``generate`` keyword arguments behind ``synthetic_dataroot``."""
    return dict(SYNTHETIC_KWARGS)


@pytest.fixture(scope="session")
def synthetic_dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bevformer.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic") / "nuscenes"
    return generate(root, progress=False, **SYNTHETIC_KWARGS)
