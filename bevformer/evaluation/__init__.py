"""nuScenes submission writer and the official NDS evaluation."""

from .nds import evaluate_nds, format_metrics
from .results import default_attribute, to_nusc_boxes, write_submission

__all__ = [
    "default_attribute",
    "evaluate_nds",
    "format_metrics",
    "to_nusc_boxes",
    "write_submission",
]
