"""Training and inference settings of the perspective head, as in mmdetection's heads.

``PerspectiveHead(train_cfg=..., test_cfg=...)`` takes each group as a dict (configs:
``perspective.mono_head.train_cfg = dict(box3d_smooth_l1_form="standard")``); keys not given
keep their defaults, which are the official BEVFormer v2 / DD3D values, and an unknown key
raises ``TypeError`` naming it and the accepted keys. The head keeps them as the frozen
dataclasses :class:`PerspectiveTrainCfg` (``head.train_cfg``: target assignment and loss
weights) and :class:`PerspectiveTestCfg` (``head.test_cfg``: thresholds of the inference).

Official files are relative to ``projects/mmdet3d_plugin/`` of fundamentalvision/BEVFormer;
the official config keys are those of its ``fcos3d_bbox_head`` (``NuscenesDD3D``) in
``projects/configs/bevformerv2/*.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bevformer.models.perspective.losses import check_smooth_l1_form
from bevformer.models.perspective.targets import SIZE_RANGES

__all__ = ["PerspectiveTestCfg", "PerspectiveTrainCfg"]

_Cfg = TypeVar("_Cfg", "PerspectiveTrainCfg", "PerspectiveTestCfg")


def _from_cfg(cls: type[_Cfg], name: str, cfg: _Cfg | Mapping[str, Any] | None) -> _Cfg:
    """``cfg`` (None, a dict of some of ``cls``'s fields, or a ``cls``) -> a ``cls``."""
    if cfg is None:
        return cls()
    if isinstance(cfg, cls):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(
            f"PerspectiveHead {name} must be a dict or a {cls.__name__}, got {type(cfg).__name__}"
        )
    accepted = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(cfg) - set(accepted))
    if unknown:
        raise TypeError(
            f"PerspectiveHead {name} has unknown key(s) {unknown}; accepted keys: {accepted}"
        )
    return cls(**cfg)


@dataclass(frozen=True)
class PerspectiveTrainCfg:
    """Target assignment and losses of the perspective head (``PerspectiveHead(train_cfg=...)``).

    Keys, defaults (the official BEVFormer v2 settings) and where they come from:

    - ``size_ranges`` = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)): per level
      (P3-P7) the closed range, in pixels of the augmented image, of ``max(l, t, r, b)`` of the
      boxes the level is responsible for (official ``target_assign_cfg.sizes_of_interest``;
      ``dd3d/modeling/prepare_targets.py``, ``nuscenes_dd3d.py``
      ``NuscenesDD3DTargetPreparer``). At least one range per level.
    - ``pos_radius`` = 1.5: centre sampling, in strides: a location is positive inside the
      square of half-size ``pos_radius * stride`` pixels around the box centre (official
      ``target_assign_cfg.pos_radius``; ``dd3d/modeling/prepare_targets.py``).
    - ``focal_alpha`` = 0.25, ``focal_gamma`` = 2.0: sigmoid focal loss of the classification
      (official ``fcos2d_loss_cfg.focal_loss_alpha / focal_loss_gamma``;
      ``dd3d/modeling/fcos2d.py`` ``FCOS2DLoss``).
    - ``box3d_weight`` = 2.0: weight of each disentangled 3D-box part loss (quat, proj_ctr,
      depth, size) (official ``fcos3d_loss_cfg.box3d_loss_weight``; ``dd3d/modeling/fcos3d.py``
      ``FCOS3DLoss``).
    - ``conf3d_weight`` = 1.0: weight of the 3D-confidence BCE (official
      ``fcos3d_loss_cfg.conf3d_loss_weight``; ``fcos3d.py`` ``FCOS3DLoss``).
    - ``conf3d_temperature`` = 1.0, metres: the 3D-confidence target is
      ``exp(-L1 / conf3d_temperature)`` of the mean corner L1 (metres) of the full box
      (official ``fcos3d_loss_cfg.conf_3d_temperature``; ``fcos3d.py`` ``FCOS3DLoss``).
    - ``smooth_l1_beta`` = 0.05: transition of the smooth-L1 of the 3D-box corner loss (metres;
      official ``fcos3d_loss_cfg.smooth_l1_loss_beta``; ``fcos3d.py``,
      ``dd3d/modeling/disentangled_box3d_loss.py``) and of the speed loss (m/s; the official
      ``NuscenesLoss`` in ``dd3d/modeling/nuscenes_dd3d.py`` fixes it at 0.05).
    - ``box3d_smooth_l1_form`` = ``"official"``: smooth-L1 form of the 3D-box corner loss
      (:func:`~bevformer.models.perspective.losses.smooth_l1`): ``"official"`` as DD3D's
      ``dd3d/layers/smooth_l1_loss.py`` (``0.5 x^2`` below beta, no division by beta),
      ``"standard"`` the Fast R-CNN form (``0.5 x^2 / beta``); another value raises
      ``ValueError``. The speed loss always uses the standard form, as the official
      ``NuscenesLoss`` (fvcore's ``smooth_l1_loss``).
    - ``attr_weight`` = 0.2, ``speed_weight`` = 0.2: weights of the nuScenes attribute
      cross entropy and speed loss (official ``nusc_loss_weight.attr_loss_weight /
      speed_loss_weight``; ``nuscenes_dd3d.py`` ``NuscenesLoss``).
    """

    size_ranges: Sequence[tuple[float, float]] = SIZE_RANGES
    pos_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box3d_weight: float = 2.0
    conf3d_weight: float = 1.0
    conf3d_temperature: float = 1.0
    smooth_l1_beta: float = 0.05
    box3d_smooth_l1_form: str = "official"
    attr_weight: float = 0.2
    speed_weight: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_ranges", tuple(tuple(r) for r in self.size_ranges))
        check_smooth_l1_form(self.box3d_smooth_l1_form)

    @classmethod
    def from_cfg(cls, cfg: PerspectiveTrainCfg | Mapping[str, Any] | None) -> PerspectiveTrainCfg:
        """``None`` (all defaults), a dict of some of the keys, or a ``PerspectiveTrainCfg``."""
        return _from_cfg(cls, "train_cfg", cfg)


@dataclass(frozen=True)
class PerspectiveTestCfg:
    """Inference thresholds of the perspective head (``PerspectiveHead(test_cfg=...)``).

    The DD3D defaults (TRI-ML/dd3d ``configs/models/dd3d.yaml``, ``DD3D.FCOS2D.INFERENCE.*``,
    read by ``FCOS2DInference`` in ``dd3d/modeling/fcos2d.py``; see
    :mod:`bevformer.models.perspective.inference`):

    - ``pre_nms_thresh`` = 0.05: per level, candidates are the (location, class) pairs whose
      ``sigmoid(class logit) * sigmoid(centerness)`` exceeds it (``PRE_NMS_THRESH``).
    - ``pre_nms_topk`` = 1000: at most this many candidates per level and image
      (``PRE_NMS_TOPK``).
    - ``nms_thresh`` = 0.6: IoU of the class-wise NMS of the 2D boxes, on the 3D score
      (``NMS_THRESH``).
    - ``post_nms_topk`` = 100: the best detections kept per image after NMS
      (``POST_NMS_TOPK``).
    """

    pre_nms_thresh: float = 0.05
    pre_nms_topk: int = 1000
    post_nms_topk: int = 100
    nms_thresh: float = 0.6

    @classmethod
    def from_cfg(cls, cfg: PerspectiveTestCfg | Mapping[str, Any] | None) -> PerspectiveTestCfg:
        """``None`` (all defaults), a dict of some of the keys, or a ``PerspectiveTestCfg``."""
        return _from_cfg(cls, "test_cfg", cfg)
