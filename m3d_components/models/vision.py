"""The 3D Vision Transformer image encoder of M3D.

One module serves three users: the M3D-CLIP image encoder (CLS feature), the LaMed vision tower (patch tokens, later
pooled by the perceiver on the ``grid_size`` grid) and the segmentation module's image encoder (built without CLS).
The layout is MONAI's ViT-B with a "perceptron" patch embedding, so the parameter names match the released M3D-CLIP
``pretrained_ViT.bin`` and importing it is a key map (``load_vit_weights``), not surgery.

At the paper configuration a (B, 1, 32, 256, 256) volume becomes 8 × 16 × 16 = 2048 patch tokens of width 768.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils.checkpoint
from monai.networks.blocks import MLPBlock, PatchEmbeddingBlock, SABlock
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "WEIGHT_PREFIXES",
    "ViTBlock",
    "ViTConfig",
    "VisionTransformer3D",
    "load_vit_weights",
    "read_state_dict",
    "save_vit_weights",
]

logger = logging.getLogger(__name__)

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
# Where the encoder sits in the checkpoints we know, outermost wrapper first: DDP's ``module.``, the M3D-CLIP model
# (``vision_encoder.``) and a merged LaMed model (``model.vision_tower.vision_tower.``).
WEIGHT_PREFIXES = ("module.", "vision_encoder.", "model.vision_tower.vision_tower.")
# MONAI >= 1.4 ``TransformerBlock`` always owns this unused LayerNorm; a ViT saved with it carries these keys.
_STALE_CROSS_ATTENTION_KEY = re.compile(r"^blocks\.\d+\.norm_cross_attn\.")
_KEYS_SHOWN = 5

PathOrStateDict = str | os.PathLike | Mapping[str, torch.Tensor]


def _as_triple(name: str, value: Sequence[int]) -> tuple[int, int, int]:
    """Turn a JSON list or tuple into a (D, H, W) tuple of positive ints."""
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{name} must be three positive integers (D, H, W), got {value!r}")
    return values  # type: ignore[return-value]


@dataclass
class ViTConfig:
    """Hyperparameters of ``VisionTransformer3D``; the defaults are the paper's (M3D-CLIP / LaMed ViT-B).

    Sizes are (D, H, W) = (depth/slices, height, width), the order of the canonical volume (1, D, H, W).

    Raises:
        ValueError: from ``__post_init__``, naming the offending values, when a size is not a positive integer, the
            patch does not divide the image on some axis, ``hidden_size`` is not divisible by ``num_heads``,
            ``dropout`` is outside [0, 1] or ``attention`` is unknown.
    """

    in_channels: int = 1
    img_size: tuple[int, int, int] = (32, 256, 256)
    patch_size: tuple[int, int, int] = (4, 16, 16)  # → grid (8, 16, 16) = 2048 tokens, patch vector 1024
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12  # head dim 64
    dropout: float = 0.0  # the released weights were trained without dropout
    cls_token: bool = True  # False for the segmentation encoder, whose checkpoint has no ``cls_token``
    gradient_checkpointing: bool = False  # trade one extra forward per block for activation memory in training
    attention: str = "sdpa"  # "eager": MONAI's einsum softmax, kept only as the benchmark's reference configuration
    # Input standardisation (x - mean) / std inside the model, so it travels with the weights' users. Identity for the
    # released weights (trained on raw [0, 1] volumes); small encoders trained from scratch learn contrast phases far
    # faster on centred input.
    input_mean: float = 0.0
    input_std: float = 1.0

    def __post_init__(self) -> None:
        self.img_size = _as_triple("img_size", self.img_size)
        self.patch_size = _as_triple("patch_size", self.patch_size)
        for name in ("in_channels", "hidden_size", "mlp_dim", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if any(i % p for i, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"patch_size {self.patch_size} must divide img_size {self.img_size} on every axis")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {self.dropout!r}")
        if not self.input_std > 0:
            raise ValueError(f"input_std must be positive, got {self.input_std!r}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Patch tokens per axis (D, H, W), e.g. (8, 16, 16) at the paper configuration."""
        return tuple(i // p for i, p in zip(self.img_size, self.patch_size))  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        """Number of patch tokens N (without CLS)."""
        d, h, w = self.grid_size
        return d * h * w

    @classmethod
    def paper(cls, **overrides: object) -> ViTConfig:
        """The released ViT-B: (1, 32, 256, 256) input, (4, 16, 16) patches, 768 wide, 12 layers (≈87.5 M params)."""
        return cls(**overrides)  # type: ignore[arg-type]

    @classmethod
    def demo(cls, **overrides: object) -> ViTConfig:
        """A ≈0.9 M-parameter encoder that trains in minutes on two CPU cores.

        (1, 32, 64, 64) input and (4, 8, 8) patches give an (8, 8, 8) grid of 512 tokens, so the perceiver's
        pooling by 2 still has a 3D grid to work on.
        """
        settings: dict[str, object] = {
            "img_size": (32, 64, 64),
            "patch_size": (4, 8, 8),
            "hidden_size": 128,
            "mlp_dim": 512,
            "num_layers": 4,
            "num_heads": 4,
        }
        return cls(**{**settings, **overrides})  # type: ignore[arg-type]


class ViTBlock(nn.Module):
    """One pre-LN transformer layer: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    MONAI's own ``TransformerBlock`` is not used: in MONAI 1.6 it always creates a ``norm_cross_attn`` LayerNorm,
    whose keys are not in the released ``pretrained_ViT.bin`` (written with MONAI 1.3). This block owns exactly
    ``norm1``, ``attn``, ``norm2`` and ``mlp``.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size)
        # use_flash_attention=True routes through torch.nn.functional.scaled_dot_product_attention.
        self.attn = SABlock(
            config.hidden_size,
            config.num_heads,
            config.dropout,
            qkv_bias=False,
            use_flash_attention=config.attention == "sdpa",
        )
        self.norm2 = nn.LayerNorm(config.hidden_size)
        self.mlp = MLPBlock(config.hidden_size, config.mlp_dim, config.dropout)
        self._attention_dropout = config.dropout

    def train(self, mode: bool = True) -> ViTBlock:
        """Switch modes; also zero the SDPA dropout outside training.

        ``SABlock`` hands its ``dropout_rate`` to SDPA as ``dropout_p`` whatever the module's mode, so without this
        an encoder with dropout > 0 would drop attention weights at inference time.
        """
        super().train(mode)
        self.attn.dropout_rate = self._attention_dropout if mode else 0.0
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) → (B, T, hidden)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer3D(nn.Module):
    """3D ViT image encoder with MONAI's parameter names.

    Patches are flattened depth-major, then H, then W, each as a (p_d, p_h, p_w, C) vector, and linearly embedded;
    a learnable position embedding is added to the patch tokens only, and the CLS token (when configured) is put in
    front afterwards, as in the released weights.

    Args:
        config: hyperparameters; ``ViTConfig()`` (the paper's) when omitted.

    Example::

        >>> encoder = VisionTransformer3D(ViTConfig.demo())
        >>> encoder(torch.rand(2, 1, 32, 64, 64)).shape  # CLS + 8 * 8 * 8 patch tokens
        torch.Size([2, 513, 128])
    """

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ViTConfig()
        cfg = self.config
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=cfg.in_channels,
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            hidden_size=cfg.hidden_size,
            num_heads=cfg.num_heads,
            proj_type="perceptron",
            pos_embed_type="learnable",
            dropout_rate=cfg.dropout,
            spatial_dims=3,
        )
        self.cls_token: nn.Parameter | None
        if cfg.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        else:
            self.register_parameter("cls_token", None)
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Patch tokens per axis (D, H, W), for reshaping (B, N, hidden) patch tokens back to a 3D grid."""
        return self.config.grid_size

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, *cfg.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected an image of shape (B, C, D, H, W) = (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point image, got dtype {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a batch of volumes.

        Args:
            x: (B, C, D, H, W) images at the configured ``in_channels`` and ``img_size``.

        Returns:
            (B, 1 + N, hidden) final-normed tokens with CLS first, or (B, N, hidden) without CLS.

        Raises:
            ValueError: when ``x`` does not have the configured shape or is not floating point.
        """
        self._check_input(x)
        if self.config.input_mean != 0.0 or self.config.input_std != 1.0:
            x = (x - self.config.input_mean) / self.config.input_std
        tokens = self.patch_embedding(x)  # (B, N, hidden), position embedding added
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, hidden)
            tokens = torch.cat([cls, tokens], dim=1)  # (B, 1 + N, hidden)
        checkpointing = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if checkpointing:
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        return self.norm(tokens)

    def cls_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) → (B, hidden): the normed CLS token, M3D-CLIP's image feature."""
        if self.cls_token is None:
            raise ValueError("cls_features needs an encoder built with cls_token=True; this one has no CLS token")
        return self.forward(x)[:, 0]

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) → (B, N, hidden): the normed patch tokens in grid order, the LaMed tower's output."""
        tokens = self.forward(x)
        return tokens if self.cls_token is None else tokens[:, 1:]


def read_state_dict(source: PathOrStateDict) -> dict[str, torch.Tensor]:
    """Read weights from a mapping, a ``.safetensors`` file or a ``.bin``/``.pt``/``.pth`` torch file."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in (".bin", ".pt", ".pth"):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path}: expected a state dict, got {type(loaded).__name__}")
        return dict(loaded)
    raise ValueError(f"{path}: unsupported weight file suffix {path.suffix!r}; use .safetensors, .bin, .pt or .pth")


def _select_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    selected = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not selected:
        raise ValueError(f"no key starts with prefix {prefix!r}; first keys: {sorted(state_dict)[:_KEYS_SHOWN]}")
    if len(selected) < len(state_dict):
        logger.info("kept %d keys under %r, ignored %d others", len(selected), prefix, len(state_dict) - len(selected))
    return selected


def _strip_known_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Peel ``WEIGHT_PREFIXES`` off, outermost first, until the keys are bare encoder names."""
    while True:
        present = [p for p in WEIGHT_PREFIXES if any(key.startswith(p) for key in state_dict)]
        if not present:
            return state_dict
        if len(present) > 1:
            raise ValueError(f"checkpoint holds several encoders under {present}; pass prefix= to choose one")
        state_dict = _select_prefix(state_dict, present[0])


def _describe(keys: Sequence[str]) -> str:
    shown = ", ".join(sorted(keys)[:_KEYS_SHOWN])
    return f"{len(keys)} ({shown}{', …' if len(keys) > _KEYS_SHOWN else ''})"


def load_vit_weights(
    model: VisionTransformer3D,
    path_or_state_dict: PathOrStateDict,
    strict: bool = True,
    prefix: str | None = None,
) -> tuple[list[str], list[str]]:
    """Load encoder weights saved by us, by M3D-CLIP (``pretrained_ViT.bin``) or inside a larger model.

    Known wrappers (``WEIGHT_PREFIXES``) are stripped and keys outside them ignored, so a whole M3D-CLIP or merged
    LaMed state dict works too. ``cls_token`` is dropped when the model has none (the segmentation encoder), and the
    unused ``norm_cross_attn`` LayerNorms of a ViT saved with MONAI >= 1.4 are dropped.

    Args:
        model: the encoder to fill in place.
        path_or_state_dict: a ``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth`` file, or a state dict.
        strict: raise on missing or unexpected keys; with False they are logged and skipped.
        prefix: take only the keys under this prefix (e.g. ``"model.seg_module.image_encoder."``) instead of
            guessing from ``WEIGHT_PREFIXES``.

    Returns:
        (missing, unexpected) key lists; both empty after a strict load.

    Raises:
        ValueError: on missing/unexpected keys (strict), shape mismatches or non-tensor values, listing a few.
        FileNotFoundError: when the file does not exist.
    """
    state_dict = read_state_dict(path_or_state_dict)
    state_dict = _select_prefix(state_dict, prefix) if prefix is not None else _strip_known_prefixes(state_dict)
    stale = [key for key in state_dict if _STALE_CROSS_ATTENTION_KEY.match(key)]
    if model.cls_token is None and "cls_token" in state_dict:
        stale.append("cls_token")
    for key in stale:
        del state_dict[key]
    if stale:
        logger.info("dropped %s keys the encoder does not use", _describe(stale))

    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"ViT weights: values that are not tensors: {_describe(not_tensors)}")
    expected = model.state_dict()
    mismatched = [
        f"{key} {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if mismatched:
        raise ValueError(f"ViT weights: shape mismatches: {_describe(mismatched)}")
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if strict and (missing or unexpected):
        raise ValueError(f"ViT weights: missing keys: {_describe(missing)}; unexpected keys: {_describe(unexpected)}")
    if missing or unexpected:
        logger.warning("ViT weights: missing %s; unexpected %s", _describe(missing), _describe(unexpected))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)
    return missing, unexpected


def save_vit_weights(model: VisionTransformer3D, path: str | os.PathLike) -> Path:
    """Write the encoder's state dict to a ``.safetensors`` file atomically (temporary file, then ``os.replace``).

    A crash mid-write leaves the previous file intact instead of a truncated one.

    Raises:
        ValueError: when ``path`` does not end in ``.safetensors``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: ViT weights are saved as .safetensors, got suffix {path.suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp_name, metadata={"format": "pt"})
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
