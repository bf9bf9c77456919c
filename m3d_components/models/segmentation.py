"""The promptable 3D segmentation module driven by LaMed's ``[SEG]`` token (SegVol design, without its text encoder).

A separate 3D ViT (no CLS token) encodes the volume; one prompt vector (the projected ``[SEG]`` hidden state) joins
SAM-style output tokens in MONAI's two-way transformer (``monai.networks.nets.vista3d``), whose attention is switched
to ``scaled_dot_product_attention`` here; two transposed convolutions bring the image tokens to 4× the patch grid, a
hypernetwork MLP and the prompt's own projection turn them into mask logits, and trilinear upsampling returns logits
at the input size. Parameter names follow SegVol's checkpoint where the parts are the same, so
:func:`convert_segvol_state_dict` only renames what MONAI spells differently and drops what is never used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.nets import vista3d
from torch import nn

from m3d_components.models.vision import ViTConfig, VisionTransformer3D, read_state_dict

__all__ = [
    "PromptableSegmenter",
    "SDPAAttention",
    "SegPromptProjector",
    "SegmenterConfig",
    "convert_segvol_state_dict",
    "load_segmenter_weights",
    "packed_samples",
    "seg_token_states",
]

logger = logging.getLogger(__name__)


class SDPAAttention(vista3d.Attention):
    """MONAI's two-way-transformer attention (same projections and names) computed by
    ``torch.nn.functional.scaled_dot_product_attention`` instead of an explicit softmax."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


def _use_sdpa(module: nn.Module) -> nn.Module:
    for child in module.modules():
        if type(child) is vista3d.Attention:
            child.__class__ = SDPAAttention
    return module


@dataclass(frozen=True)
class SegmenterConfig:
    """Shapes of the segmentation module; :meth:`paper` is the published one (≈120 M parameters)."""

    vit: ViTConfig = field(default_factory=lambda: ViTConfig.paper(cls_token=False))
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    num_mask_tokens: int = 4

    def __post_init__(self) -> None:
        if self.vit.cls_token:
            raise ValueError(
                "the segmentation image encoder has no CLS token: build its ViTConfig with cls_token=False"
            )
        if self.vit.hidden_size % 8:
            raise ValueError(f"hidden_size must be a multiple of 8, got {self.vit.hidden_size}")
        if self.num_heads < 1 or (self.vit.hidden_size // 2) % self.num_heads:
            raise ValueError(f"the mask decoder's {self.num_heads} heads must divide half the hidden size "
                             f"({self.vit.hidden_size // 2}, the width of its image-token attention)")

    @classmethod
    def paper(cls, **overrides: object) -> SegmenterConfig:
        return cls(**overrides)  # type: ignore[arg-type]


class MaskDecoder(nn.Module):
    """Output tokens + prompt → two-way transformer → 4× upscaled image features → one mask's logits (SegVol's)."""

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        dim, grid = config.vit.hidden_size, config.vit.grid_size
        self.transformer = _use_sdpa(
            vista3d.TwoWayTransformer(config.depth, dim, config.num_heads, config.mlp_dim, "relu", 2)
        )
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(config.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, kernel_size=2, stride=2),
            nn.LayerNorm((dim // 4, *(2 * g for g in grid))),  # over the whole tensor, as in the released weights
            nn.GELU(),
            nn.ConvTranspose3d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        # Only mask 0 is returned (single-mask output), so only its hypernetwork exists here.
        self.output_hypernetworks_mlps = nn.ModuleList([vista3d.MLP(dim, dim, dim // 8, 3)])
        self.txt_align_upscaled_embedding = nn.Linear(dim, dim // 8)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """(B, C, d, h, w) image features (dense prompt added), (1, C, d, h, w) PE, (B, C) prompt
        → (B, 1, 4d, 4h, 4w) mask logits."""
        batch = image.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).expand(batch, -1, -1)
        tokens = torch.cat([tokens, prompt[:, None]], dim=1)
        queries, keys = self.transformer(image, image_pe.expand(batch, -1, -1, -1, -1), tokens)
        keys = keys.transpose(1, 2).reshape(image.shape)
        upscaled = self.output_upscaling(keys)  # (B, C/8, 4d, 4h, 4w)
        hyper = self.output_hypernetworks_mlps[0](queries[:, 1])  # mask token 0
        weights = hyper + self.txt_align_upscaled_embedding(prompt)  # mask + prompt-similarity maps, summed
        return torch.einsum("bc,bcdhw->bdhw", weights, upscaled)[:, None]


class PromptableSegmenter(nn.Module):
    """Volume (B, 1, D, H, W) + one prompt vector per volume (B, C) → mask logits (B, 1, D, H, W).

    Args:
        config: shapes; the ViT part must match the volumes given (its ``img_size``).
    """

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        super().__init__()
        self.config = config or SegmenterConfig.paper()
        dim = self.config.vit.hidden_size
        self.image_encoder = VisionTransformer3D(self.config.vit)
        self.prompt_encoder = nn.Module()
        self.prompt_encoder.pe_layer = vista3d.PositionEmbeddingRandom(dim // 2)
        self.prompt_encoder.no_mask_embed = nn.Embedding(1, dim)
        self.mask_decoder = MaskDecoder(self.config)

    @property
    def prompt_dim(self) -> int:
        return self.config.vit.hidden_size

    def forward(self, image: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        if prompt.ndim != 2 or prompt.shape != (image.shape[0], self.prompt_dim):
            raise ValueError(
                f"prompt must be (batch, {self.prompt_dim}) for {image.shape[0]} volume(s), got {tuple(prompt.shape)}"
            )
        grid = self.config.vit.grid_size
        tokens = self.image_encoder.patch_features(image)  # (B, N, C) in (d, h, w) raster order
        features = tokens.transpose(1, 2).reshape(image.shape[0], -1, *grid)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1, 1)
        image_pe = self.prompt_encoder.pe_layer(grid)[None].to(features.dtype)
        low = self.mask_decoder(features + dense, image_pe, prompt.to(features.dtype))
        return F.interpolate(low, size=image.shape[2:], mode="trilinear", align_corners=False)


def seg_token_states(
    hidden: torch.Tensor, token_ids: torch.Tensor, seg_token_id: int, mask: torch.Tensor | None = None,
    samples: torch.Tensor | None = None, num_samples: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LLM state that asks for each sample's mask: the hidden state of the token *before* ``[SEG]`` (the one
    whose output predicts ``[SEG]``), averaged when a sample has several; no loop over the batch.

    Args:
        hidden: (B, L, H) last-layer hidden states.
        token_ids: (B, L) the ids at those positions (prompt + answer when training, generated ids when generating).
        seg_token_id: the id of ``[SEG]``.
        mask: (B, L) positions that count (e.g. the attention mask); None counts all.
        samples: (B, L) the sample each position belongs to, for packed rows holding several samples (see
            :func:`packed_samples`); None: one sample per row.
        num_samples: how many samples there are when ``samples`` is given.

    Returns:
        (N, H) states (zeros where a sample has no ``[SEG]``) and (N,) bool: which samples have one; N = B without
        ``samples``. A ``[SEG]`` at position 0 has no preceding state and is not counted.
    """
    if hidden.shape[:2] != token_ids.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and token ids {tuple(token_ids.shape)} disagree")
    is_seg = token_ids == seg_token_id
    if mask is not None:
        is_seg = is_seg & mask.bool()
    if samples is None:
        samples = torch.arange(token_ids.shape[0], device=token_ids.device)[:, None].expand_as(token_ids)
        num_samples = token_ids.shape[0]
    elif num_samples is None:
        raise ValueError("num_samples is needed with samples")
    is_seg[:, 0] = False  # nothing precedes it
    seg_at = is_seg.nonzero(as_tuple=True)
    owner = samples[seg_at]  # the sample of each [SEG]; its state is the one a position earlier
    states = hidden.new_zeros((num_samples, hidden.shape[-1])).index_add_(0, owner, hidden[seg_at[0], seg_at[1] - 1])
    counts = torch.zeros(num_samples, dtype=hidden.dtype, device=hidden.device).index_add_(
        0, owner, torch.ones_like(owner, dtype=hidden.dtype))
    return states / counts.clamp(min=1)[:, None], counts > 0


def packed_samples(token_ids: torch.Tensor, position_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """(B, L) the sample of each position in packed rows (see :mod:`~m3d_components.models.packing`).

    A run of positions from a position id 0 to the next is a sample when it holds an image placeholder block; the
    ``k``-th such run, row by row, is sample ``k`` (the ``k``-th image, as :meth:`LaMed.embed
    <m3d_components.models.lamed.LaMed.embed>` places them). A run without a block (a row's padding) belongs to the
    sample before it.
    """
    run = (position_ids == 0).flatten().cumsum(0) - 1  # run index of every position, row by row
    is_image = token_ids == image_token_id
    runs_with_image = torch.zeros(int(run[-1]) + 1, dtype=torch.long, device=token_ids.device)
    runs_with_image.index_fill_(0, run[is_image.flatten()], 1)
    sample_of_run = (runs_with_image.cumsum(0) - 1).clamp(min=0)
    return sample_of_run[run].view_as(token_ids)


class SegPromptProjector(nn.Sequential):
    """LLM width → segmentation prompt width, as published: Linear → ReLU → Linear → Dropout(0.1)."""

    def __init__(self, llm_width: int, prompt_width: int, dropout: float = 0.1) -> None:
        super().__init__(nn.Linear(llm_width, llm_width), nn.ReLU(), nn.Linear(llm_width, prompt_width),
                         nn.Dropout(dropout))


# SegVol names → ours, for the parts that exist in both (everything else SegVol saves is unused in M3D).
_RENAMES = ((".mlp.lin1.", ".mlp.linear1."), (".mlp.lin2.", ".mlp.linear2."))
_UNUSED_PREFIXES = (
    "text_encoder.",
    "prompt_encoder.point_embeddings.",
    "prompt_encoder.not_a_point_embed.",
    "prompt_encoder.mask_downscaling.",
    "mask_decoder.iou_prediction_head.",
)


def convert_segvol_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SegVol checkpoint (``pytorch_model.bin``: keys under ``model.``) → :class:`PromptableSegmenter` names.

    Drops the text encoder, the point/box/mask prompt inputs, the IoU head and the hypernetworks of masks 1–3 (M3D
    returns mask 0 only); renames MONAI's MLP layers; reorders the Fourier matrix rows, since SegVol stacks grid
    coordinates as (axis 1, axis 0, axis 2) and MONAI's encoding as (axis 0, axis 1, axis 2); drops the
    ``norm_cross_attn`` LayerNorms newer MONAI ViTs save. Load the result with ``strict=True``.

    Raises:
        ValueError: when no key is under ``model.`` (not a SegVol checkpoint).
    """
    if not any(k.startswith("model.") for k in state_dict):
        raise ValueError(f"not a SegVol checkpoint: no key starts with 'model.' (first keys: {sorted(state_dict)[:5]})")
    out, dropped = {}, 0
    for key, value in state_dict.items():
        if not key.startswith("model."):
            dropped += 1
            continue
        name = key[len("model."):]
        if (
            name.startswith(_UNUSED_PREFIXES)
            or (name.startswith("mask_decoder.output_hypernetworks_mlps.") and not name.startswith(
                "mask_decoder.output_hypernetworks_mlps.0."))
            or ".norm_cross_attn." in name
        ):
            dropped += 1
            continue
        for old, new in _RENAMES:
            name = name.replace(old, new)
        if name == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            value = value[[1, 0, 2]]
        out[name] = value
    logger.info("SegVol checkpoint: %d tensors kept, %d unused by M3D dropped", len(out), dropped)
    return out


def load_segmenter_weights(segmenter: PromptableSegmenter, source: str | os.PathLike | Mapping) -> None:
    """Fill ``segmenter`` from released SegVol weights (converted here) or from its own saved state dict, strictly.

    Raises:
        ValueError: naming missing, unexpected or mis-shaped tensors (e.g. SegVol weights for another image size).
    """
    state = read_state_dict(source)
    if any(k.startswith("model.") for k in state):
        state = convert_segvol_state_dict(state)
    own = segmenter.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and v.shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"segmentation weights from {source if not isinstance(source, Mapping) else 'state dict'} do not fit: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {mismatched[:5]}"
        )
    segmenter.load_state_dict(state)
    logger.info("loaded segmentation module weights (%d tensors)", len(state))
