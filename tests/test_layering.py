"""The import layering of the three packages, ``ops`` <- ``backbones`` <- ``bevformer``, and
which heavy modules the light ones load.

Each import check runs in a fresh interpreter (the test process has long imported everything):
it imports the modules named, then prints the names in ``sys.modules`` as JSON.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "projects" / "configs" / "bevformerv2"


def _run(code: str) -> object:
    """Run ``code`` in a fresh interpreter at the repository root; its last stdout line, JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _loaded_after(*imports: str) -> set[str]:
    """Names in ``sys.modules`` of a fresh interpreter after importing ``imports``."""
    lines = "\n".join(f"importlib.import_module({name!r})" for name in imports)
    code = f"import importlib, json, sys\n{lines}\nprint(json.dumps(sorted(sys.modules)))"
    return set(_run(code))


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> list[str]:
    """Dotted names of every ``.py`` module of ``package`` (a folder under the repository)."""
    return [_module_name(path) for path in sorted((REPO / package).rglob("*.py"))]


def _top(names: set[str], *packages: str) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in packages)


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages that a source file imports anywhere (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"), [("backbones", {"bevformer"}), ("ops", {"bevformer", "backbones"})]
)
def test_no_source_file_imports_a_higher_layer(package, forbidden):
    files = sorted((REPO / package).rglob("*.py"))
    assert len(files) >= 5
    offending = {str(p.relative_to(REPO)): _imported_packages(p) & forbidden for p in files}
    assert {k: v for k, v in offending.items() if v} == {}


def test_backbones_load_no_bevformer_module():
    modules = _modules("backbones")
    assert {"backbones.internimage", "backbones.fpn", "backbones.resnet"} <= set(modules)
    loaded = _loaded_after(*modules)
    assert "backbones.internimage" in loaded and "torch" in loaded
    assert _top(loaded, "bevformer") == []


def test_ops_load_neither_backbones_nor_bevformer():
    loaded = _loaded_after(*_modules("ops"))
    assert "ops.ms_deform_attn" in loaded and "ops.dcnv3" in loaded
    assert _top(loaded, "bevformer", "backbones") == []


def test_detector_and_head_load_neither_the_devkit_nor_the_engine():
    loaded = _loaded_after("bevformer.models.detector", "bevformer.models.head")
    assert "bevformer.structures.boxes" in loaded  # the module that converts to nuScenes Box
    assert _top(loaded, "nuscenes") == []
    assert [n for n in loaded if n.startswith("bevformer.engine")] == []


def test_box_conversions_still_reach_the_devkit():
    """The devkit import moved into the functions that need it; they still return its Box."""
    name = _run(
        """
        import json
        import numpy as np
        from bevformer.structures.boxes import boxes_to_global
        box = boxes_to_global(np.zeros((1, 9)) + 1.0, np.eye(4), np.eye(4))[0]
        print(json.dumps(type(box).__module__))
        """
    )
    assert name == "nuscenes.utils.data_classes"


def test_visualization_does_not_load_the_training_launcher():
    loaded = _loaded_after(*_modules("bevformer/visualization"))
    assert "bevformer.visualization.render" in loaded
    assert "bevformer.engine.launch" not in loaded


def test_the_builder_imports_every_module_that_registers_a_component():
    registering = sorted(
        _module_name(path)
        for package in ("bevformer", "backbones")
        for path in (REPO / package).rglob("*.py")
        if ".register_module(" in path.read_text()
        and _module_name(path) not in ("bevformer.builder", "bevformer.registry")
    )
    assert "bevformer.models.detector" in registering and "bevformer.data.dataset" in registering
    loaded = _loaded_after("bevformer.builder")
    assert [name for name in registering if name not in loaded] == []


_COLLECT_TYPES = """
import glob, json, os
from mmengine.config import Config
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from bevformer.registry import DATASETS, MODELS, TRANSFORMS
import bevformer.builder

def types(node):
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield node["type"]
        for key, value in node.items():
            if key != "init_cfg":  # an initialisation spec (mmengine's), not a node to build
                yield from types(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from types(value)

known_models = set(MODELS.module_dict)
known_data = set(DATASETS.module_dict) | set(TRANSFORMS.module_dict) | known_models
seen, missing = set(), []
for path in sorted(glob.glob(os.path.join("projects", "configs", "bevformerv2", "*.py"))):
    cfg = Config.fromfile(path).to_dict()
    name = os.path.basename(path)
    wanted = [(t, known_models) for t in types(cfg["model"])]
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader):
            wanted += [(t, known_data) for t in types(cfg[loader]["dataset"])]
    constructor = cfg.get("optim_wrapper", {}).get("constructor")
    if constructor:
        wanted.append((constructor, set(OPTIM_WRAPPER_CONSTRUCTORS.module_dict)))
    for kind, known in wanted:
        seen.add(kind)
        if kind not in known:
            missing.append(f"{name}: {kind}")
print(json.dumps({"seen": sorted(seen), "missing": missing}))
"""


def test_every_type_the_configs_name_is_registered_by_the_builder():
    """With only :mod:`bevformer.builder` imported, each ``type`` under ``model`` and the
    datasets of every config, and the optimizer-wrapper ``constructor``, is registered."""
    assert len(list(CONFIG_DIR.glob("*.py"))) >= 7
    result = _run(_COLLECT_TYPES)
    assert result["missing"] == []
    expected = {
        "BEVFormerV2",
        "BEVEncoder",
        "BEVFormerHead",
        "InternImage",
        "ResNetBackbone",
        "FPN",
        "NuScenesTemporalDataset",
        "LoadMultiViewImages",
        "LayerDecayOptimWrapperConstructor",
    }
    assert expected <= set(result["seen"])
