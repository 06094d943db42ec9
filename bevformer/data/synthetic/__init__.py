"""Synthetic nuScenes-format dataset: a procedurally generated ``v1.0-mini`` dataroot (tables,
six camera JPEGs per sample, LIDAR_TOP point clouds, map masks) that ``nuscenes.NuScenes`` loads
unchanged and ``DetectionEval`` scores. See ``README.md`` beside this file."""

from .catalog import CAMERA_NAMES, CLASS_HUE_DEG, CLASS_INFO, CLASSES, scene_names
from .generate import VERSION, generate
from .rig import load_rig

__all__ = [
    "CAMERA_NAMES",
    "CLASSES",
    "CLASS_HUE_DEG",
    "CLASS_INFO",
    "VERSION",
    "generate",
    "load_rig",
    "scene_names",
]
