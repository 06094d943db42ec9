"""One registry per kind of object built from configs.

Config files (``projects/configs``) name classes by ``type=``; the builders in
:mod:`bevformer.builder` are the only place that turns those dicts into objects. Components of
``bevformer`` register themselves with a decorator, e.g. ``@MODELS.register_module()``; those
of ``backbones`` (which imports nothing from ``bevformer``) are registered by
:mod:`bevformer.builder`, which also imports every registering module.
"""

from mmengine.registry import Registry

__all__ = ["MODELS", "DATASETS", "TRANSFORMS"]

MODELS = Registry("model")
DATASETS = Registry("dataset")
TRANSFORMS = Registry("transform")
