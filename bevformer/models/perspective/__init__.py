"""Perspective supervision of BEVFormer v2: a DD3D-style FCOS2D + FCOS3D head on P3-P7.

Modules: :mod:`.head` (the head: predictors, forward, official checkpoint keys),
:mod:`.config` (its grouped settings ``train_cfg`` = :class:`PerspectiveTrainCfg` and
``test_cfg`` = :class:`PerspectiveTestCfg`), :mod:`.layers` (scales, towers, predictor convs,
flattening helpers), :mod:`.batch_loss` (losses of a batch: assignment glue, 2D/3D/nuScenes
terms), :mod:`.targets` (FCOS target assignment), :mod:`.losses` (loss functions),
:mod:`.coder` (3D box encoding/decoding), :mod:`.inference` (per-camera 3D boxes after NMS),
:mod:`.stage` (the detector's perspective stage).

Targets, one dict per image (B*N images, camera-major within each sample), M boxes:
``boxes2d`` (M, 4) x1 y1 x2 y2 pixels of the augmented image; ``labels`` (M,) int64 (< 0 is
ignored); ``center2d`` (M, 2) projected 3D centre in pixels; ``depth`` (M,) camera z, metres;
``size_wlh`` (M, 3); ``rotation_cam`` (M, 4) quaternion wxyz in the camera frame;
``intrinsics`` (3, 3) after augmentation; ``attributes`` (M,) DD3D ids (3 = none, see
:func:`attribute_ids`); ``speeds`` (M,) m/s, NaN where unknown. :func:`targets_from_batch`
builds them from the batch's ``mono`` and ``intrinsics``.
"""

from bevformer.models.perspective.coder import attribute_ids, decode_boxes3d, encode_boxes3d
from bevformer.models.perspective.config import PerspectiveTestCfg, PerspectiveTrainCfg
from bevformer.models.perspective.head import PerspectiveHead
from bevformer.models.perspective.inference import predict_boxes
from bevformer.models.perspective.targets import (
    assign_targets,
    compute_locations,
    targets_from_batch,
)

__all__ = [
    "PerspectiveHead",
    "PerspectiveTestCfg",
    "PerspectiveTrainCfg",
    "assign_targets",
    "attribute_ids",
    "compute_locations",
    "decode_boxes3d",
    "encode_boxes3d",
    "predict_boxes",
    "targets_from_batch",
]
