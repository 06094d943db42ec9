"""Inference APIs: :class:`Detector`, a trained model fed one keyframe at a time."""

from bevformer.apis.detector import Detector

__all__ = ["Detector"]
