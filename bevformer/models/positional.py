"""Learned positional encoding of the BEV grid (DETR / mmdet ``LearnedPositionalEncoding``).

Each BEV cell (row i, column j) gets ``concat(col_embed[j], row_embed[i])``: the first
``num_feats`` channels come from the column (lidar x) embedding, the next ``num_feats`` from the
row (lidar y) embedding, as mmdet's ``LearnedPositionalEncoding`` that BEVFormer uses.

Shapes: output ``[2 * num_feats, H, W]`` for an ``H x W`` grid.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LearnedPositionalEncoding"]


class LearnedPositionalEncoding(nn.Module):
    """Row and column embeddings, concatenated per cell (column first)."""

    def __init__(self, num_feats: int, row_num_embed: int, col_num_embed: int) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.row_embed = nn.Embedding(row_num_embed, num_feats)
        self.col_embed = nn.Embedding(col_num_embed, num_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, height: int, width: int) -> Tensor:
        """-> ``[2 * num_feats, height, width]``."""
        if height > self.row_embed.num_embeddings or width > self.col_embed.num_embeddings:
            raise ValueError(
                f"positional encoding has {self.row_embed.num_embeddings} x "
                f"{self.col_embed.num_embeddings} cells, asked for {height} x {width}; "
                "set row_num_embed/col_num_embed to the BEV size"
            )
        device = self.row_embed.weight.device
        x_embed = self.col_embed(torch.arange(width, device=device))  # [W, F]
        y_embed = self.row_embed(torch.arange(height, device=device))  # [H, F]
        pos = torch.cat(
            (
                x_embed[None, :, :].expand(height, width, self.num_feats),
                y_embed[:, None, :].expand(height, width, self.num_feats),
            ),
            dim=-1,
        )  # [H, W, 2F]
        return pos.permute(2, 0, 1)
