"""Fixtures of the evaluation tests.

``synthetic_val_dataroot``: a synthetic nuScenes dataroot generated once per session: 2 scenes
(the second is the ``mini_val`` scene-0103) x 12 keyframes, 160x90 images, seed 0. Twelve
keyframes put ground truth of all ten detection classes in the val split, which NDS >= 0.99
needs (the devkit scores a class without ground truth as AP 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_val_dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bevformer.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic_eval") / "nuscenes"
    return generate(
        root, scenes=2, samples_per_scene=12, image_size=(160, 90), seed=0, progress=False
    )
