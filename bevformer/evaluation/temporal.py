"""What the temporal fusion of a two-frame model sees and reads, measured on its own batches.

:func:`bev_mode_gap` compares, cell by cell, the three BEVs that meet in training: the past
frame's, encoded as the official ``obtain_history_bev`` does (eval mode, no gradients), and the
current frame's in eval mode and in train mode (dropout on). The fusion learns from the
difference between the past and the train-mode current BEV; at test time it sees the
difference to the eval-mode one. Where the train/eval gap of the current BEV (``mode``) is
as large as the temporal difference (``time``, past vs eval-mode current), the motion of an
object is buried in dropout noise during training.

:func:`past_gradient_share` asks which of the two BEVs the outputs depend on: of the gradient
of the top-k queries' predicted speed, the share that reaches the past BEV (against the
current BEV), next to the same share for their class scores as a control. A fusion that reads
motion gives speed a different share than class.

Both take a collated batch of a two-frame fusion config (a past slot, then the current one,
e.g. frames (-1, 0); ``frame_valid`` true for both slots of every sample) and leave the
model's training flag as they found it.

:func:`velocity_probe` asks whether the motion is in the BEVs at all, apart from whether the
trained fusion reads it: a small convolutional read-out, trained on the frozen eval-mode BEVs
of the training keyframes (:func:`probe_samples`) to predict each box's velocity at its cell,
once from the past and current BEV and once from the current BEV twice (the same network),
scored on held-out keyframes. A probe that does better with the past frame finds motion the
model's own velocity output does not use.

:func:`past_cell_match` asks the same without training anything: for each box's cell of the
current BEV, the cell of the past BEV (within a few cells) whose feature is closest to it
(:func:`best_past_offsets`). For a static box that should be its own cell, for a moving one the
cell it came from. How often each holds tells whether the BEVs resolve the boxes' positions
finely enough for the fusion to see their displacement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bevformer.models.blocks import evaluating
from bevformer.models.coder import CVX, CVY
from bevformer.structures.boxes import VX, VY

__all__ = [
    "ProbeSample",
    "best_past_offsets",
    "bev_mode_gap",
    "eval_bevs",
    "past_cell_match",
    "past_gradient_share",
    "probe_samples",
    "velocity_probe",
]


def _check_model(model: nn.Module) -> None:
    """``ValueError`` unless the model fuses a past frame with the current one."""
    if len(model.frames) != 2 or model.current_slot != 1 or model.bev.fusion is None:
        raise ValueError(
            f"needs a two-frame fusion config (a past frame, then the current one: e.g. "
            f"..._t2-hybrid_12ep.py with frames (-1, 0)); this "
            f"model has frames {tuple(model.frames)}, fusion {type(model.bev.fusion).__name__}"
        )


def _two_frames(model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """-> (img ``[B, 2, N, 3, H, W]``, lidar2img ``[B, 2, N, 4, 4]``); ``ValueError`` unless
    the model fuses a past frame with the current one and every sample has its past frame."""
    _check_model(model)
    valid = batch.get("frame_valid")
    if valid is None or not bool(torch.as_tensor(valid)[:, 0].all()):
        raise ValueError("every sample of the batch needs its past frame (frame_valid[:, 0])")
    return batch["img"], batch["lidar2img"]


def eval_bevs(model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """The past and current BEV ``[B, bev_h * bev_w, C]`` of a batch as the official
    ``obtain_history_bev`` encodes the past frame: eval mode, no gradients. Computed once and
    passed to :func:`bev_mode_gap` and :func:`past_gradient_share` as ``bevs``, it saves each
    of them encoding both frames again. ``ValueError`` as :func:`_two_frames`."""
    return _encode_two_frames(model, *_two_frames(model, batch))


def _encode_two_frames(model: nn.Module, img: Tensor, lidar2img: Tensor) -> tuple[Tensor, Tensor]:
    """Past and current BEV ``[B, bev_h * bev_w, C]`` of ``img`` ``[B, T, N, 3, H, W]`` with its
    ``lidar2img`` ``[B, T, N, 4, 4]``, both encoded in eval mode without gradients."""
    cur = model.current_slot
    with evaluating(model), torch.no_grad():
        return model.frame_bev(img, lidar2img, cur - 1), model.frame_bev(img, lidar2img, cur)


def _relative(a: Tensor, b: Tensor) -> Tensor:
    """Per-cell ``|a - b| / |b|`` of ``[B, Q, C]`` BEVs -> ``[B, Q]``."""
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-12)


def bev_mode_gap(
    model: nn.Module,
    batch: Mapping[str, Any],
    moving_speed: float = 2.0,
    static_speed: float = 0.2,
    bevs: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Relative per-cell differences (module docstring) on one batch with ground truth.

    Returns 1-D tensors ``mode_all``, ``time_all`` over every cell, and ``mode_moving``,
    ``time_moving`` / ``mode_static``, ``time_static`` over the cells that hold the centre of
    a box faster than ``moving_speed`` / slower than ``static_speed`` (m/s, lidar frame).
    ``mode``: |current(train) - current(eval)| / |current(eval)|; ``time``: |past - current
    (eval)| / |current(eval)|. The train-mode pass draws dropout from torch's global generator.
    ``bevs``: this batch's :func:`eval_bevs`, computed here when not given.
    """
    img, lidar2img = _two_frames(model, batch)
    cur = model.current_slot
    past, current = eval_bevs(model, batch) if bevs is None else bevs
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            current_train = model.frame_bev(img, lidar2img, cur)
    finally:
        model.train(was_training)
    mode, time = _relative(current_train, current), _relative(past, current)
    grid = model.grid
    out = {"mode_all": mode.flatten(), "time_all": time.flatten()}
    picked: dict[str, list[Tensor]] = {k: [] for k in ("moving", "static")}
    for b, boxes in enumerate(batch["gt_boxes"]):
        token, inside = grid.cell_tokens(boxes[:, :2].to(current))  # [M], [M]
        speed = boxes[:, VX : VY + 1].to(current).norm(dim=-1)
        picked["moving"].append(token[inside & (speed > moving_speed)] + b * grid.num_cells)
        picked["static"].append(token[inside & (speed < static_speed)] + b * grid.num_cells)
    for name, tokens in picked.items():
        index = torch.cat(tokens)
        out[f"mode_{name}"], out[f"time_{name}"] = mode.flatten()[index], time.flatten()[index]
    return out


def past_gradient_share(
    model: nn.Module,
    batch: Mapping[str, Any],
    top_k: int = 30,
    bevs: tuple[Tensor, Tensor] | None = None,
) -> dict[str, float]:
    """Share of the gradient reaching the past BEV, ``|g_past| / (|g_past| + |g_current|)``,
    for the sum of the predicted speeds (``"velocity"``) and of the best class scores
    (``"class"``) of each sample's ``top_k`` queries (last decoder layer, first group), summed
    over the batch's samples. The model runs in eval mode, as at test time. ``bevs``: this
    batch's :func:`eval_bevs`, computed here when not given."""
    img, lidar2img = _two_frames(model, batch)
    cur = model.current_slot
    past, current = eval_bevs(model, batch) if bevs is None else bevs
    with evaluating(model), torch.no_grad():
        feats = model.extract_feat(img[:, cur], None, augment=False)
    past, current = past.detach().requires_grad_(), current.detach().requires_grad_()
    grid = model.grid
    was_training = model.training
    model.eval()
    try:
        fused = model.bev.fusion([grid.tokens_to_map(past), grid.tokens_to_map(current)])
        outputs, _ = model.decode_queries(
            fused, feats, batch.get("intrinsics"), batch.get("cam2lidar"), None, img
        )
    finally:
        model.train(was_training)
    per_group = model.pts_bbox_head.queries_per_group
    cls = outputs["cls_scores"][-1, :, :per_group]  # [B, Qg, K]
    box = outputs["bbox_preds"][-1, :, :per_group]  # [B, Qg, 10]
    top = cls.sigmoid().amax(-1).topk(min(top_k, per_group), dim=-1).indices  # [B, k]
    rows = torch.arange(cls.shape[0])[:, None]
    targets = {
        "velocity": box[rows, top, CVX : CVY + 1].norm(dim=-1).sum(),
        "class": cls[rows, top].amax(-1).sum(),
    }
    shares = {}
    for name, target in targets.items():
        grads = torch.autograd.grad(target, (past, current), retain_graph=True, allow_unused=True)
        p, c = (0.0 if g is None else g.norm().item() for g in grads)  # None: not read at all
        shares[name] = p / max(p + c, 1e-30)
    return shares


def best_past_offsets(
    past: Tensor, current: Tensor, rows: Tensor, cols: Tensor, radius: int = 3
) -> Tensor:
    """For each cell ``(rows[m], cols[m])`` of the ``current [C, H, W]`` BEV map, the offset
    ``(dr, dc)`` (``|dr|, |dc| <= radius``) of the ``past [C, H, W]`` cell whose feature has the
    highest cosine similarity to the current cell's -> ``[M, 2]`` long (row, column offsets;
    rows follow lidar y, columns lidar x). Offsets leaving the map are not candidates; a tie
    goes to the first offset in row-major order. ``ValueError`` for maps of different shapes
    or a radius below 1.
    """
    if radius < 1:
        raise ValueError(f"radius must be at least 1 cell, got {radius}")
    if past.shape != current.shape or past.dim() != 3:
        raise ValueError(
            f"past and current must be [C, H, W] maps of one shape, got {tuple(past.shape)} "
            f"and {tuple(current.shape)}"
        )
    _, H, W = current.shape
    span = torch.arange(-radius, radius + 1)
    offsets = torch.stack(torch.meshgrid(span, span, indexing="ij"), -1).reshape(-1, 2)  # [K, 2]
    best = []
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        pr, pc = r + offsets[:, 0], c + offsets[:, 1]  # [K]
        inside = (pr >= 0) & (pr < H) & (pc >= 0) & (pc < W)
        similarity = torch.full((len(offsets),), -float("inf"))
        window = past[:, pr[inside], pc[inside]]  # [C, K']
        similarity[inside] = torch.cosine_similarity(window, current[:, r, c, None], dim=0)
        best.append(offsets[int(similarity.argmax())])
    return torch.stack(best) if best else offsets.new_zeros(0, 2)


def past_cell_match(
    model: nn.Module,
    batch: Mapping[str, Any],
    radius: int = 3,
    moving_speed: float = 2.0,
    static_speed: float = 0.2,
    bevs: tuple[Tensor, Tensor] | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Best-matching past cell (:func:`best_past_offsets`) of each box's current cell, beside
    the cell the box really came from, on one batch of a two-frame fusion config.

    A box's true past cell holds ``xy - v * dt`` (lidar metres, current frame; ``v`` its
    ground-truth velocity in m/s, ``dt`` the time between the two keyframes from
    ``batch["meta"][b].frame_timestamps``, microseconds). Boxes count when both cells lie inside
    the grid at least ``radius`` cells from its edge and the true offset is within ``radius``:
    ``"static"`` below ``static_speed``, ``"moving"`` above ``moving_speed`` whose true past
    cell is not their own. Returns, for each, ``best`` and ``true`` offsets ``[M, 2]`` long
    (rows = lidar y, columns = lidar x, in cells). The BEVs as :func:`eval_bevs` (``bevs``:
    computed here when not given). ``ValueError`` as :func:`eval_bevs`, or without ``meta``.
    """
    _two_frames(model, batch)
    metas = batch.get("meta")
    if metas is None:
        raise ValueError("the batch needs its 'meta' (frame_timestamps) to know the time step")
    past, current = eval_bevs(model, batch) if bevs is None else bevs
    grid = model.grid
    past, current = grid.tokens_to_map(past), grid.tokens_to_map(current)  # [B, C, H, W]
    cur = model.current_slot
    H, W = grid.bev_h, grid.bev_w
    found: dict[str, dict[str, list[Tensor]]] = {
        kind: {"best": [], "true": []} for kind in ("static", "moving")
    }
    for b, boxes in enumerate(batch["gt_boxes"]):
        stamps = metas[b].frame_timestamps
        dt = (stamps[cur] - stamps[cur - 1]) * 1e-6
        boxes = boxes.to(current)
        velocity = boxes[:, VX : VY + 1]
        token, inside = grid.cell_tokens(boxes[:, :2])
        past_token, past_inside = grid.cell_tokens(boxes[:, :2] - velocity * dt)
        rows, cols = token // W, token % W
        true = torch.stack([past_token // W - rows, past_token % W - cols], -1)  # [M, 2]
        keep = inside & past_inside & (true.abs() <= radius).all(-1)
        keep &= (rows >= radius) & (rows < H - radius) & (cols >= radius) & (cols < W - radius)
        speed = velocity.norm(dim=-1)
        kinds = {
            "static": keep & (speed < static_speed),
            "moving": keep & (speed > moving_speed) & (true != 0).any(-1),
        }
        for kind, pick in kinds.items():
            best = best_past_offsets(past[b], current[b], rows[pick], cols[pick], radius)
            found[kind]["best"].append(best)
            found[kind]["true"].append(true[pick])
    return {
        kind: {name: torch.cat(parts) for name, parts in lists.items()}
        for kind, lists in found.items()
    }


class ProbeSample(NamedTuple):
    """One keyframe for :func:`velocity_probe`: eval-mode BEV maps ``past``, ``current``
    ``[C, H, W]``, and its boxes inside the BEV range: ``tokens [M]`` (cell ``i * bev_w + j``)
    and ``velocity [M, 2]`` (vx, vy in m/s, lidar frame)."""

    past: Tensor
    current: Tensor
    tokens: Tensor
    velocity: Tensor


def probe_samples(model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> list[ProbeSample]:
    """The :class:`ProbeSample` of every sample of ``batches`` (collated, a two-frame fusion
    config) that has its past frame and at least one box in range; the BEVs as the past frame's
    in training (eval mode, no gradients)."""
    _check_model(model)
    samples = []
    grid = model.grid
    for batch in batches:
        keep_idx = torch.as_tensor(batch["frame_valid"])[:, 0].nonzero().flatten()
        if len(keep_idx) == 0:
            continue  # scene starts: no past frame
        img, lidar2img = batch["img"][keep_idx], batch["lidar2img"][keep_idx]
        past, current = _encode_two_frames(model, img, lidar2img)  # [B', Q, C] each
        past, current = grid.tokens_to_map(past), grid.tokens_to_map(current)  # [B', C, H, W]
        for row, b in enumerate(keep_idx.tolist()):
            boxes = batch["gt_boxes"][b].to(current)
            tokens, inside = grid.cell_tokens(boxes[:, :2])
            if bool(inside.any()):
                velocity = boxes[inside, VX : VY + 1]
                samples.append(ProbeSample(past[row], current[row], tokens[inside], velocity))
    return samples


def _probe_net(channels: int, hidden: int) -> nn.Module:
    """Three 3x3 convolutions (the receptive field of ResNetFusion's three blocks, +-3 cells)
    from two stacked BEV maps ``[B, 2C, H, W]`` to a velocity map ``[B, 2, H, W]``."""
    return nn.Sequential(
        nn.Conv2d(2 * channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, 2, 3, padding=1),
    )


def _probe_errors(net: nn.Module, samples: list[ProbeSample], use_past: bool) -> Tensor:
    """Per-box velocity error ``|v_pred - v_gt|`` (m/s, as the devkit's AVE) ``[sum M]``."""
    inputs = torch.stack(
        [torch.cat([s.past if use_past else s.current, s.current]) for s in samples]
    )
    field = net(inputs).flatten(2)  # [B, 2, H * W]
    errors = [
        (field[b][:, s.tokens].T - s.velocity).norm(dim=-1)  # [M, 2] at the boxes' cells -> [M]
        for b, s in enumerate(samples)
    ]
    return torch.cat(errors)


def _all_errors(net: nn.Module, samples: list[ProbeSample], use_past: bool) -> Tensor:
    """:func:`_probe_errors` over every sample, 64 maps at a time, without gradients."""
    with torch.no_grad():
        chunks = range(0, len(samples), 64)
        return torch.cat([_probe_errors(net, samples[i : i + 64], use_past) for i in chunks])


def velocity_probe(
    train: list[ProbeSample],
    held_out: list[ProbeSample],
    use_past: bool,
    epochs: int = 30,
    batch_size: int = 8,
    lr: float = 1e-3,
    hidden: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Trains a velocity read-out (:func:`_probe_net`) on the frozen BEVs of ``train`` (Adam,
    the mean per-box velocity error as the loss) and scores it.

    ``use_past``: the input is (past, current); otherwise (current, current), the same network
    without the motion. Returns the mean per-box error (m/s) on ``train`` and ``held_out``, the
    same over the held-out boxes faster than 1 m/s (``"held_out_moving"``), and the error of
    velocity 0 over the held-out boxes, all and faster than 1 m/s (``"zero"``,
    ``"zero_moving"``: their mean speed). ``ValueError`` without samples."""
    if not train or not held_out:
        raise ValueError(
            f"needs training and held-out samples, got {len(train)} and {len(held_out)}"
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = _probe_net(train[0].current.shape[0], hidden)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            chunk = [train[i] for i in order[start : start + batch_size]]
            loss = _probe_errors(net, chunk, use_past).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    train_err, held_err = _all_errors(net, train, use_past), _all_errors(net, held_out, use_past)
    speed = torch.cat([s.velocity for s in held_out]).norm(dim=-1)
    return {
        "train": train_err.mean().item(),
        "held_out": held_err.mean().item(),
        "held_out_moving": held_err[speed > 1.0].mean().item(),
        "zero": speed.mean().item(),
        "zero_moving": speed[speed > 1.0].mean().item(),
    }
