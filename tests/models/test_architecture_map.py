"""The map at the top of docs/ARCHITECTURE.md names the detector's parts as the code has them:
every attribute it lists (``bev``, ``bev.encoder``, ...) is a part of the largest tiny config's
detector with the class the map names, and every top-level sub-module is listed."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from mmengine.config import Config

from bevformer.builder import build_model

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "projects/configs/bevformerv2/bevformerv2_tiny_320x128_t2-hybrid_12ep.py"


def _map_rows() -> dict[str, str]:
    """``{attribute path: class name}`` of the map's code block."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Map of the model", 1)[1]
    block = section.split("```", 2)[1]
    rows, parent = {}, ""
    for line in block.splitlines():
        match = re.match(r"^ +(\.?)([a-z_]+)\s+([A-Z]\w+)", line)
        if not match:
            continue
        nested, name, cls = match.groups()
        path = f"{parent}.{name}" if nested else name
        if not nested:
            parent = name
        rows[path] = cls
    return rows


def test_the_map_lists_the_modules_of_the_code():
    rows = _map_rows()
    with torch.device("meta"):  # shapes only
        model = build_model(Config.fromfile(str(CONFIG)).model)
    assert len(rows) >= 11
    for path, cls in rows.items():
        part = model
        for name in path.split("."):
            part = getattr(part, name, None)
        assert part is not None, f"the map lists {path}, which the detector does not have"
        found = type(part).__name__
        backbones = ("InternImage", "ResNetBackbone")
        assert found == cls or (cls in backbones and found in backbones), (path, cls, found)
    children = {name for name, _ in model.named_children()} - {"data_preprocessor", "grid_mask"}
    assert children <= set(rows), f"top-level modules missing from the map: {children - set(rows)}"
