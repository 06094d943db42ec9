"""The one place where config dicts become objects.

A config node is a dict with a ``type`` key naming a registered class (registries in
:mod:`bevformer.registry`); its other keys are constructor arguments. Nodes are built depth
first, so constructors receive built modules, never dicts (a dict argument without ``type``
stays a plain dict; so does an ``init_cfg`` node). A key the constructor does not accept is an
error that names the key and the class, instead of being silently dropped.

    model = build_model(Config.fromfile("projects/configs/bevformerv2/...py").model)
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from mmengine.registry import Registry

from bevformer.registry import DATASETS, MODELS, TRANSFORMS

__all__ = ["build_dataset", "build_from_cfg", "build_model", "import_components"]

# Modules whose import registers components; absent optional ones are skipped.
COMPONENT_MODULES = (
    "backbones",
    "backbones.internimage",
    "backbones.fpn",
    "backbones.resnet",
    "bevformer.models.encoder",
    "bevformer.models.temporal",
    "bevformer.models.detector",
    "bevformer.models.head",
    "bevformer.models.mono_head",
    "bevformer.models.perspective",
    "bevformer.data",
    "bevformer.data.dataset",
    "bevformer.data.transforms",
)


def import_components() -> None:
    """Imports the modules that register models, datasets and transforms."""
    for name in COMPONENT_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # the module exists but one of its imports is missing
                raise


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
    import_components()
    return build_from_cfg(cfg, MODELS)


def build_dataset(cfg: Any) -> Any:
    """Builds a dataset; nested ``type`` dicts (the pipeline) come from TRANSFORMS/DATASETS."""
    import_components()
    return build_from_cfg(cfg, DATASETS, (TRANSFORMS, MODELS))
