"""ONNX export of the inference path: images and camera matrices in, top-k boxes out.

:class:`ExportModel` wraps a :class:`~bevformer.models.detector.BEVFormerV2` so that its forward
is the predict path with static shapes: backbone -> neck -> BEV stage -> decoder -> head ->
the coder's top-k (:func:`decode_topk`, the :class:`~bevformer.models.coder.NMSFreeCoder`
decoding with a ``valid`` mask instead of dropping boxes). :func:`export_onnx` writes it with
the deformable operators in their ``decomposed`` form: ``ops.reference_ops()`` makes them
``F.grid_sample`` (ONNX ``GridSample``, opset >= 16), and the spatial cross-attention runs every
BEV query through every camera with the unseen ones masked (static shapes, the same values),
so the file runs in stock onnxruntime.

Inputs (B batch, N cameras, H W the config's padded test image size)::

    img        float32 [B, N, 3, H, W]   the test pipeline's output (normalised, padded)
    lidar2img  float32 [B, N, 4, 4]      current lidar frame -> pixels

Outputs (k = ``post_processor.max_num``)::

    boxes   float32 [B, k, 9]   lidar-frame box vectors (docs/CONVENTIONS.md)
    scores  float32 [B, k]      sigmoid scores, descending
    labels  int64   [B, k]      class indices
    valid   bool    [B, k]      centre inside post_center_range (the boxes predict mode keeps)
    indices int64   [B, k]      query * K + class of each entry (which query gave the box)

Configs with past frames add inputs (``lidar2img`` of every slot, ``frame_valid``, the past
frames' neck maps) and outputs (the current frame's maps); hybrid queries add the current
cameras' ``intrinsics`` and ``cam2lidar`` (the perspective head's detections become queries
with static shapes, :mod:`bevformer.deploy.hybrid_export`); streaming configs add the
previous BEV with the ego motion and return the new BEV; see :class:`ExportModel`. What the
export cannot represent is refused with :class:`ExportError` naming the option: future
frames, a coder ``score_threshold`` (its fallback loop depends on the data).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import onnx
import torch
from torch import Tensor, nn

import ops
from bevformer.deploy.custom_ops import DOMAIN, DOMAIN_VERSION, custom_symbolics
from bevformer.deploy.hybrid_export import static_proposals
from bevformer.models.coder import NMSFreeCoder, X, Z, denormalize_bbox
from bevformer.models.detector import BEVFormerV2
from bevformer.models.temporal import PreviousBEV
from ops.build import load_extension

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "ExportError",
    "ExportModel",
    "decode_topk",
    "export_onnx",
    "padded_test_size",
]

INPUT_NAMES = ("img", "lidar2img")
OUTPUT_NAMES = ("boxes", "scores", "labels", "valid", "indices")
STREAMING_INPUT_NAMES = ("prev_bev", "prev2cur", "prev_valid")
HYBRID_INPUT_NAMES = ("intrinsics", "cam2lidar")
OPS_FORMS = ("decomposed", "custom")


class ExportError(ValueError):
    """A model option the ONNX export cannot represent (the message names it)."""


def _check_coder(coder: NMSFreeCoder) -> None:
    if coder.score_threshold:
        raise ExportError(
            f"post_processor.score_threshold={coder.score_threshold}: its fallback (lowering "
            "the threshold until a box passes) depends on the data; export without it "
            "(--cfg-options model.post_processor.score_threshold=None) and threshold the scores"
        )


def decode_topk(
    coder: NMSFreeCoder, cls_scores: Tensor, bbox_preds: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:meth:`NMSFreeCoder.decode` with static shapes: logits ``[B, Q, K]`` and codes ``[B, Q,
    10]`` -> boxes ``[B, k, 9]``, scores ``[B, k]``, labels ``[B, k]``, valid ``[B, k]``,
    indices ``[B, k]`` (query * K + class) with ``k = min(max_num, Q * K)``; the boxes
    ``decode`` returns are those where ``valid``."""
    _check_coder(coder)
    B, Q, K = cls_scores.shape
    probs = cls_scores.sigmoid().flatten(1)  # [B, Q*K] over (query, class) pairs
    scores, flat_index = probs.topk(min(coder.max_num, Q * K), dim=1)
    labels = flat_index % K
    query_index = torch.div(flat_index, K, rounding_mode="floor")
    # [B, k] query indices -> [B, k, 10] codes of those queries
    codes = torch.gather(
        bbox_preds, 1, query_index.unsqueeze(-1).expand(-1, -1, bbox_preds.shape[-1])
    )
    boxes = denormalize_bbox(codes)
    valid = torch.ones_like(scores, dtype=torch.bool)
    if coder.post_center_range is not None:
        bounds = boxes.new_tensor(coder.post_center_range)
        centres = boxes[..., X : Z + 1]
        valid = (centres >= bounds[:3]).all(-1) & (centres <= bounds[3:]).all(-1)
    return boxes, scores, labels, valid, flat_index


class ExportModel(nn.Module):
    """The predict path of ``model`` with static shapes (module docstring); ``model`` is put in
    eval mode. Raises :class:`ExportError` for the options the export cannot represent.

    Fusion configs with past frames (``frames`` like ``(-1, 0)``) take, besides the current
    images, ``lidar2img [B, T, N, 4, 4]`` of every slot (past cameras in the current lidar
    frame, as the dataset gives them), ``frame_valid [B, T]`` and the neck maps the encoder
    reads of each past slot (``past{t}_level{l}``), and also return the current frame's maps
    (``level{l}``): the caller passes them back as a past slot later, so each image goes
    through the backbone once (as :class:`bevformer.apis.Detector`).

    Streaming configs (``temporal="streaming"``) also take the previous call's BEV
    (``prev_bev [B, Q, C]``, its ``bev`` output), the ego motion ``prev2cur [B, 4, 4]`` from
    the previous lidar frame to the current one (``inv(lidar2global_cur) @
    lidar2global_prev``, identity without a previous frame) and ``prev_valid [B]`` (bool: the
    previous frame is of the same scene), and return the new ``bev``: what
    :class:`~bevformer.models.temporal.TemporalState` carries in PyTorch.
    """

    def __init__(self, model: BEVFormerV2) -> None:
        super().__init__()
        if any(offset > 0 for offset in model.frames):
            raise ExportError(
                f"model.bev.frames={model.frames}: future keyframes are not there when a frame "
                "arrives; the export takes the current and past frames only"
            )
        _check_coder(model.post_processor)
        self.model = model
        # the perspective head alone is training-only and is left out; with hybrid queries its
        # detections become decoder queries (hybrid_export.static_proposals)
        self.hybrid = model.perspective is not None and model.perspective.hybrid is not None
        self.num_levels = int(model.bev.encoder.num_levels)
        self.streaming = model.bev.temporal == "streaming"
        current = model.current_slot
        self.past_slots = [t for t in range(len(model.frames)) if t != current]
        # the wrapper too: the exporter restores the wrapper's mode afterwards, and a wrapper
        # left in training mode would put the model back into it (dropout on)
        self.eval()

    @property
    def input_names(self) -> list[str]:
        names = list(INPUT_NAMES)
        if self.past_slots:
            names.append("frame_valid")
            levels = range(self.num_levels)
            names += [f"past{t}_level{lvl}" for t in self.past_slots for lvl in levels]
        if self.hybrid:
            names += list(HYBRID_INPUT_NAMES)
        if self.streaming:
            names += list(STREAMING_INPUT_NAMES)
        return names

    @property
    def output_names(self) -> list[str]:
        names = list(OUTPUT_NAMES)
        if self.streaming:
            names.append("bev")
        if self.past_slots:
            names += [f"level{lvl}" for lvl in range(self.num_levels)]
        return names

    def scene_start(self, batch_size: int = 1) -> list[Tensor]:
        """The streaming inputs of a first keyframe (no previous BEV): ``prev_bev`` zeros
        ``[B, Q, C]``, ``prev2cur`` identity ``[B, 4, 4]``, ``prev_valid`` False ``[B]``."""
        grid = self.model.grid
        Q, C = grid.bev_h * grid.bev_w, int(self.model.bev.encoder.embed_dims)
        B = batch_size
        return [
            torch.zeros(B, Q, C),
            torch.eye(4).expand(B, 4, 4).clone(),
            torch.zeros(B, dtype=torch.bool),
        ]

    def forward(self, img: Tensor, lidar2img: Tensor, *extra: Tensor) -> tuple[Tensor, ...]:
        """img ``[B, N, 3, H, W]``; lidar2img ``[B, N, 4, 4]`` (one frame) or ``[B, T, N, 4,
        4]``; then, in :attr:`input_names` order, ``frame_valid [B, T]`` and the past maps
        ``num_levels x [B, N, C, h, w]`` per past slot (past slots), ``intrinsics [B, N, 3,
        3]`` and ``cam2lidar [B, N, 4, 4]`` of the current images (hybrid queries),
        ``prev_bev``, ``prev2cur``, ``prev_valid`` (streaming) -> boxes, scores, labels,
        valid, indices (+ the new BEV, + the current maps)."""
        model = self.model
        rest = list(extra)
        frame_valid, maps = None, {}
        if self.past_slots:
            frame_valid = rest.pop(0)
            for t in self.past_slots:
                maps[t] = rest[: self.num_levels]
                del rest[: self.num_levels]
        else:
            lidar2img = lidar2img.unsqueeze(1)  # one frame slot: T = 1
        cameras = [rest.pop(0), rest.pop(0)] if self.hybrid else []  # intrinsics, cam2lidar
        previous = PreviousBEV(*rest) if self.streaming else None
        T = lidar2img.shape[1]
        # [B, N, 3, H, W] -> [B, T, N, 3, H, W] without a copy: the past slots' images are
        # not read (their maps are inputs), only the batch's shape
        frames = img.unsqueeze(1).expand(-1, T, -1, -1, -1, -1)
        current: list[Tensor] = []

        def features(t: int) -> list[Tensor]:
            if t in maps:
                return maps[t]
            current[:] = model.extract_feat(img, None, augment=False)
            return current

        bev, feats, _ = model.bev_features(
            frames, lidar2img, frame_valid, prev_state=previous, features=features
        )
        if self.hybrid:
            stage = model.perspective
            size = (int(img.shape[-2]), int(img.shape[-1]))
            proposals, _ = static_proposals(stage, feats, *cameras, model.grid, size)
            hybrid = stage.hybrid(proposals, stage.levels(feats), size)
            outputs = dict(model.pts_bbox_head(bev, model.grid, hybrid))
        else:
            outputs, _ = model.decode_queries(bev, feats, None, None, None, frames)
        result = decode_topk(model.post_processor, *model.pts_bbox_head.first_group(outputs))
        if self.streaming:
            # without fusion and BEV augmentation the BEV is the encoder output, which is
            # what the next frame attends to (TemporalState.bev)
            result = (*result, bev)
        return (*result, *feats[: self.num_levels]) if self.past_slots else result


def compare_topk(expected: Sequence[Tensor], got: Sequence[Tensor]) -> dict[str, float | int]:
    """Two runs' outputs (:data:`OUTPUT_NAMES` order, e.g. PyTorch and onnxruntime) compared per
    (query, class) pair, since near-equal scores may come out of top-k in either order:
    ``matched`` pairs in both top-k's, the largest |difference| of their ``scores`` and of
    their ``boxes`` (metres, valid entries), ``label_valid_mismatches`` among them, and
    ``boundary_gap``: the largest distance between the score of a pair in only one top-k and
    the other run's k-th score (0 when the sets agree; a pair in only one set is a tie at the
    boundary only if this is within the score tolerance)."""
    out: dict[str, float | int] = dict.fromkeys(
        ("matched", "scores_max_abs", "boxes_max_abs_m", "label_valid_mismatches", "boundary_gap"),
        0,
    )
    for b in range(expected[0].shape[0]):
        rows = [{int(i): n for n, i in enumerate(r[4][b].tolist())} for r in (expected, got)]
        common = sorted(set(rows[0]) & set(rows[1]))
        ia = torch.tensor([rows[0][i] for i in common], dtype=torch.long)
        ib = torch.tensor([rows[1][i] for i in common], dtype=torch.long)
        ea, eb = [t[b] for t in expected], [t[b] for t in got]
        out["matched"] += len(common)
        diff = (ea[1][ia] - eb[1][ib]).abs()
        out["scores_max_abs"] = max(
            out["scores_max_abs"], float(diff.max()) if len(common) else 0.0
        )
        valid = ea[3][ia] & eb[3][ib]
        if bool(valid.any()):
            box = (ea[0][ia] - eb[0][ib])[valid].abs().max()
            out["boxes_max_abs_m"] = max(out["boxes_max_abs_m"], float(box))
        out["label_valid_mismatches"] += int((ea[2][ia] != eb[2][ib]).sum())
        out["label_valid_mismatches"] += int((ea[3][ia] != eb[3][ib]).sum())
        for mine, other, theirs in ((rows[0], rows[1], eb), (rows[1], rows[0], ea)):
            run = ea if mine is rows[0] else eb
            for i in set(mine) - set(other):
                gap = abs(float(run[1][mine[i]]) - float(theirs[1][-1]))
                out["boundary_gap"] = max(out["boundary_gap"], gap)
    return out


def padded_test_size(
    transforms: Sequence[Mapping[str, Any]], size_divisor: int = 32
) -> tuple[int, int]:
    """The padded (H, W) of the images a test pipeline (config dicts) produces: the
    ``final_size`` of its ``CropResizeFlipImage`` rounded up to its ``PadMultiViewImage``
    divisor and to the collate's ``size_divisor``. Raises :class:`ExportError` when the
    pipeline does not fix the size (give the size explicitly then)."""
    final = [t["final_size"] for t in transforms if t.get("type") == "CropResizeFlipImage"]
    if len(final) != 1 or final[0] is None:
        raise ExportError(
            "the test pipeline has no single CropResizeFlipImage with a final_size, so the "
            "exported image size is not fixed by the config; pass --image-size H W"
        )
    divisors = [int(size_divisor)]
    divisors += [
        int(t.get("size_divisor") or 1) for t in transforms if t.get("type") == "PadMultiViewImage"
    ]
    step = max(divisors)
    return tuple(-(-int(v) // step) * step for v in final[0])  # type: ignore[return-value]


def export_onnx(
    model: BEVFormerV2,
    path: str | os.PathLike,
    image_size: Sequence[int],
    *,
    num_cams: int | None = None,
    opset: int = 17,
    dynamic_batch: bool = False,
    ops_form: str = "decomposed",
) -> ExportModel:
    """Write ``model``'s inference path to ``path`` for padded images of ``image_size`` (H, W)
    from ``num_cams`` cameras (default the model's). ``ops_form``: ``"decomposed"`` (standard
    operators, module docstring; ``opset`` >= 16 for ``GridSample``) or ``"custom"`` (one
    :mod:`bevformer.deploy.custom_ops` node per deformable operator, for runtimes with
    plugins; needs the compiled ``ops`` extension). ``dynamic_batch`` makes B a dynamic axis.
    Returns the wrapped module the file was traced from. Raises :class:`ExportError`."""
    if ops_form not in OPS_FORMS:
        raise ExportError(f"ops_form must be one of {OPS_FORMS}, got {ops_form!r}")
    if ops_form == "decomposed" and opset < 16:
        raise ExportError(f"opset {opset}: the decomposed operators need GridSample, opset >= 16")
    if ops_form == "custom" and load_extension() is None:
        raise ExportError(
            "--ops custom writes the compiled operators' calls as nodes, but the ops extension "
            "could not be built here (see the warning above; python -m ops.build); use --ops "
            "decomposed"
        )
    wrapped = ExportModel(model)
    H, W = (int(v) for v in image_size)
    N = num_cams if num_cams is not None else len(model.camera_names)
    inputs: list[Tensor] = [torch.zeros(1, N, 3, H, W)]
    if wrapped.past_slots:
        T = len(model.frames)
        inputs += [torch.eye(4).expand(1, T, N, 4, 4).clone(), torch.ones(1, T, dtype=torch.bool)]
        with torch.no_grad():
            maps = model.extract_feat(inputs[0], None, augment=False)[: wrapped.num_levels]
        inputs += [torch.zeros_like(m) for _ in wrapped.past_slots for m in maps]
    else:
        inputs.append(torch.eye(4).expand(1, N, 4, 4).clone())
    if wrapped.hybrid:  # a camera looking along lidar x from the origin
        intrinsics = torch.tensor([[W / 2.0, 0.0, W / 2.0], [0.0, W / 2.0, H / 2.0], [0, 0, 1]])
        cam2lidar = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
        inputs += [intrinsics.expand(1, N, 3, 3).clone(), cam2lidar.expand(1, N, 4, 4).clone()]
    if wrapped.streaming:
        inputs += wrapped.scene_start()  # the graph has no branch on them: any values trace it
    dynamic = None
    if dynamic_batch:
        dynamic = {name: {0: "batch"} for name in (*wrapped.input_names, *wrapped.output_names)}
    form = ops.reference_ops() if ops_form == "decomposed" else custom_symbolics(opset)
    with form, torch.no_grad():
        torch.onnx.export(
            wrapped,
            tuple(inputs),
            os.fspath(path),
            opset_version=opset,
            dynamo=False,
            input_names=wrapped.input_names,
            output_names=wrapped.output_names,
            dynamic_axes=dynamic,
        )
    if ops_form == "custom":
        _declare_custom_domain(path)
    return wrapped


def _declare_custom_domain(path: str | os.PathLike) -> None:
    """Checks that the custom form has its nodes (a file without them would silently be the
    decomposed form) and records the domain's version in the file's opset imports."""
    graph = onnx.load(os.fspath(path))
    kinds = {node.op_type for node in graph.graph.node if node.domain == DOMAIN}
    if not kinds:
        raise ExportError(
            f"the custom form of {os.fspath(path)} has no {DOMAIN} nodes: the model did not "
            "call the compiled operators (is ops.reference_ops() active around the export?)"
        )
    imports = [o for o in graph.opset_import if o.domain == DOMAIN]
    if imports:
        imports[0].version = DOMAIN_VERSION
    else:
        graph.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    onnx.save(graph, os.fspath(path))
