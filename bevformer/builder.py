"""The one place where config dicts become objects.

A config node is a dict with a ``type`` key naming a registered class (registries in
:mod:`bevformer.registry`); its other keys are constructor arguments. Nodes are built depth
first, so constructors receive built modules, never dicts (a dict argument without ``type``
stays a plain dict; so does an ``init_cfg`` node). A key the constructor does not accept is an
error that names the key and the class, instead of being silently dropped.

    model = build_model(Config.fromfile("projects/configs/bevformerv2/...py").model)

Importing this module registers every component a config can name: it imports each module
that registers one (``@MODELS.register_module()`` and the like), and registers the modules of
the ``backbones`` package (``InternImage``, ``ResNetBackbone``, ``FPN``), which import nothing
from ``bevformer``, and the BEV grid (``BEVGrid``, :mod:`bevformer.structures.grid`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mmengine.registry import Registry

# The modules that register components, all of them, imported here so that importing the
# builder registers every ``type`` a config can name (a missing one is an ImportError).
import backbones.layer_decay  # noqa: F401  (LayerDecayOptimWrapperConstructor, in mmengine)
import bevformer.data.dataset  # noqa: F401  (DATASETS: NuScenesTemporalDataset)
import bevformer.data.transforms  # noqa: F401  (TRANSFORMS: the pipeline steps)
import bevformer.engine.amp  # noqa: F401  (CPUBFloat16OptimWrapper, in mmengine)
import bevformer.models.bev  # noqa: F401  (MODELS: TemporalBEV)
import bevformer.models.coder  # noqa: F401  (MODELS: NMSFreeCoder)
import bevformer.models.criterion  # noqa: F401  (MODELS: SetCriterion3D)
import bevformer.models.detector  # noqa: F401  (MODELS: BEVFormerV2)
import bevformer.models.encoder  # noqa: F401  (MODELS: BEVEncoder)
import bevformer.models.head  # noqa: F401  (MODELS: BEVFormerHead)
import bevformer.models.hybrid  # noqa: F401  (MODELS: HybridQueries)
import bevformer.models.perspective.head  # noqa: F401  (MODELS: PerspectiveHead)
import bevformer.models.perspective.stage  # noqa: F401  (MODELS: PerspectiveStage)
import bevformer.models.temporal  # noqa: F401  (MODELS: ResNetFusion)
from backbones.fpn import FPN
from backbones.internimage import InternImage
from backbones.resnet import ResNetBackbone
from bevformer.registry import DATASETS, MODELS, TRANSFORMS
from bevformer.structures.grid import BEVGrid

__all__ = ["build_dataset", "build_from_cfg", "build_model"]

# ``backbones`` imports nothing from ``bevformer`` (layering ops <- backbones <- bevformer), and
# ``bevformer.structures`` nothing from the registry, so their buildable classes are registered
# here, under their class names.
MODELS.register_module(module=InternImage)
MODELS.register_module(module=ResNetBackbone)
MODELS.register_module(module=FPN)
MODELS.register_module(module=BEVGrid)


def _to_plain(cfg: Any) -> Any:
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return cfg


def _lookup(name: str, registries: tuple[Registry, ...]) -> type:
    for registry in registries:
        cls = registry.get(name)
        if cls is not None:
            return cls
    known = sorted({k for r in registries for k in r.module_dict})
    raise KeyError(
        f"type={name!r} is not registered in {[r.name for r in registries]}; known types: "
        f"{known}. Check the spelling in the config, or import the module that registers it"
    )


def _check_arguments(cls: type, kwargs: Mapping[str, Any]) -> None:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n != "self" and p.kind is not p.VAR_POSITIONAL]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"config for {cls.__name__} has unknown key(s) {unknown}; {cls.__name__} accepts "
            f"{accepted}. Remove or rename the key(s) in the config"
        )


def build_from_cfg(cfg: Any, registry: Registry, fallbacks: tuple[Registry, ...] = ()) -> Any:
    """Builds ``cfg`` (a ``type`` dict, or a list/tuple/dict containing them) recursively.

    The node's ``type`` is looked up in ``registry`` first, then in ``fallbacks``; nested
    nodes are looked up in all of them.
    """
    cfg = _to_plain(cfg)
    registries = (registry, *fallbacks)
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(build_from_cfg(c, registry, fallbacks) for c in cfg)
    if not isinstance(cfg, Mapping):
        return cfg
    # ``init_cfg`` (mmengine's ``dict(type="Pretrained", ...)``) is an initialisation spec
    # that the module applies in ``init_weights()``, not a node to build
    kwargs = {
        k: v if k == "init_cfg" else build_from_cfg(v, registry, fallbacks)
        for k, v in cfg.items()
        if k != "type"
    }
    if "type" not in cfg:
        return kwargs
    kind = cfg["type"]
    cls = kind if inspect.isclass(kind) or callable(kind) else _lookup(str(kind), registries)
    if inspect.isclass(cls):
        _check_arguments(cls, kwargs)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"building {getattr(cls, '__name__', cls)} from config: {err}") from err


def build_model(cfg: Any) -> Any:
    """Builds a model (and every registered sub-module inside it) from its config dict."""
    return build_from_cfg(cfg, MODELS)


def build_dataset(cfg: Any) -> Any:
    """Builds a dataset; nested ``type`` dicts (the pipeline) come from TRANSFORMS/DATASETS."""
    return build_from_cfg(cfg, DATASETS, (TRANSFORMS, MODELS))
