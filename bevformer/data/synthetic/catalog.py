"""What the synthetic world is made of: nuScenes categories, attributes, visibility bins,
class sizes, class colours and the scene list.

Sizes are the nuScenes v1.0-trainval per-class means of the annotation ``wlh`` (rounded), as
used for anchor priors in the nuScenes detection literature. Category, attribute and
visibility names/descriptions are the ones of the nuScenes tables (nuScenes devkit schema).
"""

from __future__ import annotations

from dataclasses import dataclass

from nuscenes.utils.splits import mini_train, mini_val

__all__ = [
    "ATTRIBUTES",
    "CAMERA_NAMES",
    "CATEGORIES",
    "CLASSES",
    "CLASS_HUE_DEG",
    "CLASS_INFO",
    "LIDAR_NAME",
    "MINI_LOCATIONS",
    "VISIBILITY",
    "ClassInfo",
    "scene_names",
]

CAMERA_NAMES = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
LIDAR_NAME = "LIDAR_TOP"

# The nuScenes detection classes, in the detection order (index = label).
CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)


@dataclass(frozen=True)
class ClassInfo:
    """One detection class: its nuScenes general category and mean size (metres)."""

    category: str
    wlh: tuple[float, float, float]
    hue_deg: float  # base hue of the rendered object (HSV, degrees)
    kind: str  # "vehicle", "cycle", "pedestrian" or "static": decides the attribute family


CLASS_INFO: dict[str, ClassInfo] = {
    "car": ClassInfo("vehicle.car", (1.95, 4.62, 1.73), 0.0, "vehicle"),
    "truck": ClassInfo("vehicle.truck", (2.52, 6.93, 2.84), 28.0, "vehicle"),
    "construction_vehicle": ClassInfo("vehicle.construction", (2.85, 6.37, 3.19), 54.0, "vehicle"),
    "bus": ClassInfo("vehicle.bus.rigid", (2.94, 11.19, 3.47), 88.0, "vehicle"),
    "trailer": ClassInfo("vehicle.trailer", (2.90, 12.29, 3.87), 135.0, "vehicle"),
    "barrier": ClassInfo("movable_object.barrier", (2.53, 0.50, 0.98), 178.0, "static"),
    "motorcycle": ClassInfo("vehicle.motorcycle", (0.77, 2.11, 1.47), 215.0, "cycle"),
    "bicycle": ClassInfo("vehicle.bicycle", (0.61, 1.70, 1.29), 258.0, "cycle"),
    "pedestrian": ClassInfo("human.pedestrian.adult", (0.67, 0.73, 1.77), 295.0, "pedestrian"),
    "traffic_cone": ClassInfo("movable_object.trafficcone", (0.41, 0.41, 1.07), 328.0, "static"),
}
CLASS_HUE_DEG = tuple(CLASS_INFO[c].hue_deg for c in CLASSES)

# (name, description, lidarseg index) of the nuScenes general categories.
CATEGORIES = (
    ("human.pedestrian.adult", "Adult subcategory.", 2),
    ("human.pedestrian.child", "Child subcategory.", 3),
    ("human.pedestrian.construction_worker", "Construction worker", 6),
    ("human.pedestrian.police_officer", "Police officer.", 8),
    ("movable_object.barrier", "Temporary road barrier to redirect traffic.", 9),
    ("movable_object.trafficcone", "All types of traffic cone.", 12),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle.", 14),
    ("vehicle.bus.rigid", "Rigid bus.", 16),
    ("vehicle.car", "Vehicle designed primarily for personal use.", 17),
    ("vehicle.construction", "Vehicles primarily designed for construction.", 18),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle.", 21),
    ("vehicle.trailer", "Any vehicle trailer.", 22),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo.", 23),
)

# (name, description) of the eight nuScenes attributes.
ATTRIBUTES = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary."),
    ("vehicle.parked", "Vehicle is stationary (usually for longer duration) with no driver."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)

# (token, level, description, lower bound of the visible fraction) of the four nuScenes bins.
VISIBILITY = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%", 0.0),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%", 0.4),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%", 0.6),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%", 0.8),
)

# Locations of the v1.0-mini scenes (their logs' locations in nuScenes).
MINI_LOCATIONS = {
    "scene-0061": "singapore-onenorth",
    "scene-0103": "boston-seaport",
    "scene-0553": "boston-seaport",
    "scene-0655": "boston-seaport",
    "scene-0757": "boston-seaport",
    "scene-0796": "singapore-queenstown",
    "scene-0916": "singapore-queenstown",
    "scene-1077": "singapore-hollandvillage",
    "scene-1094": "singapore-hollandvillage",
    "scene-1100": "singapore-hollandvillage",
}


def scene_names(count: int) -> list[str]:
    """The first ``count`` v1.0-mini scene names in a fixed order.

    The order is the sorted union of ``mini_train`` and ``mini_val``; its second entry is the
    val scene ``scene-0103``, so any ``count >= 2`` includes validation data.
    """
    names = sorted(mini_train + mini_val)
    if not 1 <= count <= len(names):
        raise ValueError(
            f"scenes must be between 1 and {len(names)} (the v1.0-mini scenes), got {count}; "
            "pass a smaller --scenes."
        )
    return names[:count]
