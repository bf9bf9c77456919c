"""The 3D spatial-pooling perceiver: ViT patch tokens → a short sequence of LLM-width image tokens.

At the paper configuration 2048 patch tokens (an 8 × 16 × 16 grid of 768-d vectors) are average-pooled by 2 along
every axis to 4 × 8 × 8 = 256 tokens, then a 2-layer MLP maps them to the LLM width. Pooling before the MLP keeps the
projector cheap and the LLM context short. Parameter names (``projector.0``, ``projector.2``) match the released
``mm_projector`` weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpatialPoolingPerceiver", "pooled_token_count"]

POOLING_TYPES = ("spatial", "sequence")
LAYER_TYPES = ("mlp", "linear")


def pooled_token_count(grid: Sequence[int], pooling: str, pooling_size: int) -> int:
    """How many image tokens pooling the patch ``grid`` leaves, checked so that a bad setting fails before the LLM
    loads (see :func:`~m3d_components.models.lamed.build_lamed`).

    Raises:
        ValueError: an unknown ``pooling``, ``pooling_size`` < 1, or a grid it does not divide.
    """
    if pooling not in POOLING_TYPES:
        raise ValueError(f"pooling must be one of {POOLING_TYPES}, got {pooling!r}")
    if pooling_size < 1:
        raise ValueError(f"pooling_size must be >= 1, got {pooling_size}")
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3:
        raise ValueError(f"grid must be (D, H, W), got {grid}")
    if pooling == "spatial" and any(g % pooling_size for g in grid):
        raise ValueError(f"every axis of the patch grid {grid} must be divisible by pooling_size {pooling_size}")
    if pooling == "sequence" and math.prod(grid) % pooling_size**3:
        raise ValueError(f"{math.prod(grid)} tokens are not divisible by pooling_size**3 = {pooling_size**3}")
    return math.prod(grid) // pooling_size**3


class SpatialPoolingPerceiver(nn.Module):
    """Average-pool patch tokens on their 3D grid (or along the sequence), then project to ``out_dim``.

    Args:
        in_dim: the vision encoder width (768 for ViT-B).
        out_dim: the LLM hidden size.
        grid: the patch grid (D, H, W) of the vision encoder, e.g. (8, 16, 16).
        pooling: ``"spatial"`` (3D average pooling, kernel = stride = ``pooling_size``) or ``"sequence"`` (1D average
            pooling over the token sequence with kernel ``pooling_size ** 3``, the same reduction).
        pooling_size: the pooling factor per axis; 1 keeps every token.
        layer_type: ``"mlp"`` (Linear → GELU → Linear …) or ``"linear"`` (Linears without activation).
        num_layers: number of Linear layers (≥ 1).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        grid: Sequence[int],
        pooling: str = "spatial",
        pooling_size: int = 2,
        layer_type: str = "mlp",
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type must be one of {LAYER_TYPES}, got {layer_type!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        pooled_token_count(grid, pooling, pooling_size)
        self.grid = tuple(int(g) for g in grid)
        self.pooling = pooling
        self.pooling_size = pooling_size
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(num_layers - 1):
            if layer_type == "mlp":
                layers.append(nn.GELU())
            layers.append(nn.Linear(out_dim, out_dim))
        self.projector = nn.Sequential(*layers)

    @property
    def num_tokens(self) -> int:
        """How many image tokens the LLM receives (256 at the paper configuration)."""
        return pooled_token_count(self.grid, self.pooling, self.pooling_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, in_dim) patch tokens in depth-major grid order → (B, ``num_tokens``, out_dim)."""
        batch, count, width = tokens.shape
        if count != math.prod(self.grid):
            raise ValueError(f"expected {math.prod(self.grid)} patch tokens for grid {self.grid}, got {count}")
        if self.pooling_size > 1:
            if self.pooling == "spatial":
                volume = tokens.transpose(1, 2).reshape(batch, width, *self.grid)
                tokens = F.avg_pool3d(volume, self.pooling_size).flatten(2).transpose(1, 2)
            else:
                tokens = F.avg_pool1d(tokens.transpose(1, 2), self.pooling_size**3).transpose(1, 2)
        return self.projector(tokens)
