"""The BEV grid: the one owner of ``bev_h``, ``bev_w``, ``pc_range`` and their conversions.

BEVFormer's BEV is a ``bev_h x bev_w`` raster over the lidar-frame box ``pc_range = (x_min,
y_min, z_min, x_max, y_max, z_max)`` (metres; official configs ``bev_h_ = bev_w_ = 200``,
``point_cloud_range = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]``). Row i covers lidar y, column j
lidar x, both growing from the range's minimum; cell (i, j) is token ``i * bev_w + j`` of the
flattened ``[B, Q, C]`` BEV (Q = bev_h * bev_w). Cell centres sit at ``(j + 0.5) / bev_w`` and
``(i + 0.5) / bev_h`` of the range (official ``BEVFormerEncoder.get_reference_points``).

"Normalised" coordinates are ``(p - min) / (max - min)`` per axis, so the range maps to
[0, 1]; the detection head's reference points and the sampling locations of the BEV
attentions use them.

Every module that needs the grid receives this object (the encoder builds it from its config
node; the detector hands the encoder's grid to the head, the hybrid queries, the BEV
augmentation and the temporal alignment), so the numbers are written once per config.

Legend: B batch, Q = H*W cells, C channels, D z-anchors per pillar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NUSCENES_PC_RANGE", "BEVGrid"]

# Official nuScenes detection range of BEVFormer (configs ``point_cloud_range``), metres.
NUSCENES_PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


@dataclass(frozen=True)
class BEVGrid:
    """A ``bev_h x bev_w`` BEV raster over the lidar-frame range ``pc_range`` (module doc).

    Raises ``ValueError`` for non-positive sizes or a range that is not 6 numbers with every
    minimum below its maximum.
    """

    bev_h: int = 200
    bev_w: int = 200
    pc_range: Sequence[float] = NUSCENES_PC_RANGE

    def __post_init__(self) -> None:
        rng = tuple(float(v) for v in self.pc_range)
        if len(rng) != 6 or any(rng[i] >= rng[i + 3] for i in range(3)):
            raise ValueError(
                "pc_range must be 6 numbers (x_min, y_min, z_min, x_max, y_max, z_max) with "
                f"each minimum below its maximum, got {list(self.pc_range)}"
            )
        if int(self.bev_h) != self.bev_h or int(self.bev_w) != self.bev_w:
            raise ValueError(f"bev_h and bev_w must be integers, got {self.bev_h}, {self.bev_w}")
        if self.bev_h < 1 or self.bev_w < 1:
            raise ValueError(f"bev_h and bev_w must be >= 1, got {self.bev_h}, {self.bev_w}")
        object.__setattr__(self, "bev_h", int(self.bev_h))
        object.__setattr__(self, "bev_w", int(self.bev_w))
        object.__setattr__(self, "pc_range", rng)

    # ------------------------------------------------------------------ sizes
    @property
    def num_cells(self) -> int:
        """Q = bev_h * bev_w, the number of BEV tokens."""
        return self.bev_h * self.bev_w

    @property
    def shape(self) -> tuple[int, int]:
        """(bev_h, bev_w): rows (lidar y), columns (lidar x)."""
        return self.bev_h, self.bev_w

    @property
    def lower(self) -> tuple[float, float, float]:
        """(x_min, y_min, z_min) in metres."""
        return self.pc_range[:3]

    @property
    def size(self) -> tuple[float, float, float]:
        """Extent (x_max - x_min, y_max - y_min, z_max - z_min) in metres."""
        return tuple(self.pc_range[i + 3] - self.pc_range[i] for i in range(3))

    @property
    def cell_size(self) -> tuple[float, float]:
        """(dx, dy): metres per column and per row."""
        sx, sy, _ = self.size
        return sx / self.bev_w, sy / self.bev_h

    # ------------------------------------------------------------------ points
    def _axes(
        self, dtype: torch.dtype, device: torch.device | None
    ) -> tuple[Tensor, Tensor]:  # normalised column and row centres [W], [H]
        xs = (torch.arange(self.bev_w, dtype=dtype, device=device) + 0.5) / self.bev_w
        ys = (torch.arange(self.bev_h, dtype=dtype, device=device) + 0.5) / self.bev_h
        return xs, ys

    def reference_points_2d(
        self, dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> Tensor:
        """Normalised (x, y) of the cell centres, token order -> ``[Q, 2]``."""
        xs, ys = self._axes(dtype, device)
        return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)

    def cell_centres(
        self, dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> Tensor:
        """Lidar (x, y) in metres of the cell centres -> ``[H, W, 2]`` (row = y, column = x)."""
        ref = self.reference_points_2d(dtype, device).view(self.bev_h, self.bev_w, 2)
        return self.denormalize(ref)

    def pillar_points(
        self,
        num_points_in_pillar: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> Tensor:
        """Lidar (x, y, z) in metres of D z-anchors per cell -> ``[D, Q, 3]``.

        The anchors divide the range's height evenly: official
        ``linspace(0.5, Z - 0.5, D) / Z`` with Z = z_max - z_min (for [-5, 3] and D = 4:
        z = -4.5, -2.17, 0.17, 2.5 m).
        """
        D = int(num_points_in_pillar)
        if D < 1:
            raise ValueError(f"num_points_in_pillar must be >= 1, got {num_points_in_pillar}")
        height = self.size[2]
        zs = torch.linspace(0.5, height - 0.5, D, dtype=dtype, device=device) / height
        xy = self.reference_points_2d(dtype, device)  # [Q, 2]
        Q = xy.shape[0]
        # [D, Q, 3] normalised -> metres
        points = torch.cat([xy[None].expand(D, Q, 2), zs.view(D, 1, 1).expand(D, Q, 1)], dim=-1)
        return self.denormalize(points)

    def normalize(self, points: Tensor) -> Tensor:
        """Metres ``[..., k]`` (k = 2: x, y; k = 3: x, y, z) -> fractions of the range."""
        k = points.shape[-1]
        if k not in (2, 3):
            raise ValueError(f"points must end in 2 (x, y) or 3 (x, y, z), got {points.shape}")
        lo = points.new_tensor(self.lower[:k])
        return (points - lo) / points.new_tensor(self.size[:k])

    def denormalize(self, points: Tensor) -> Tensor:
        """Fractions of the range ``[..., k]`` (k = 2 or 3) -> lidar metres."""
        k = points.shape[-1]
        if k not in (2, 3):
            raise ValueError(f"points must end in 2 (x, y) or 3 (x, y, z), got {points.shape}")
        lo = points.new_tensor(self.lower[:k])
        return points * points.new_tensor(self.size[:k]) + lo

    def cell_tokens(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Lidar (x, y) in metres ``[..., 2]`` -> (token ``i * bev_w + j`` of the cell holding
        each point ``[...]`` long, clamped to the nearest edge cell outside the range; whether
        the point lies inside the range ``[...]`` bool)."""
        xy = self.normalize(points)  # [..., 2] fractions of the range
        inside = ((xy >= 0) & (xy < 1)).all(-1)
        col = (xy[..., 0] * self.bev_w).long().clamp(0, self.bev_w - 1)
        row = (xy[..., 1] * self.bev_h).long().clamp(0, self.bev_h - 1)
        return row * self.bev_w + col, inside

    # ------------------------------------------------------------------ layouts
    def check_tokens(self, bev: Tensor, name: str = "bev") -> None:
        """Raises ``ValueError`` unless ``bev`` is ``[B, Q, C]`` with Q = bev_h * bev_w."""
        if bev.dim() != 3 or bev.shape[1] != self.num_cells:
            raise ValueError(
                f"{name} must be [B, bev_h*bev_w, C] = [B, {self.num_cells}, C] for the "
                f"{self.bev_h}x{self.bev_w} grid, got {tuple(bev.shape)}; the encoder's grid "
                "(model.bev.encoder.grid) sets the BEV size"
            )

    def tokens_to_map(self, bev: Tensor, name: str = "bev") -> Tensor:
        """``[B, Q, C]`` tokens -> ``[B, C, H, W]`` map (``ValueError`` naming ``name`` for
        another shape, :meth:`check_tokens`)."""
        self.check_tokens(bev, name)
        B, _, C = bev.shape
        return bev.transpose(1, 2).reshape(B, C, self.bev_h, self.bev_w)

    def map_to_tokens(self, bev_map: Tensor) -> Tensor:
        """``[B, C, H, W]`` map -> ``[B, Q, C]`` tokens."""
        if bev_map.dim() != 4 or tuple(bev_map.shape[-2:]) != self.shape:
            raise ValueError(
                f"BEV map must be [B, C, {self.bev_h}, {self.bev_w}], got {tuple(bev_map.shape)}"
            )
        return bev_map.flatten(2).transpose(1, 2)
