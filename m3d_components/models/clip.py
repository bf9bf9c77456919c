"""M3D-CLIP: a 3D ViT and a text encoder trained contrastively on image–report pairs.

Both towers give their first token ([CLS]) → a linear projection → L2 norm. The loss is the symmetric InfoNCE over
the features of the *global* batch: under ``torch.distributed`` every rank all-gathers image and text features
with gradient, so each rank scores its samples against every sample of every rank, as in the paper's recipe.
The temperature is learned as a log-scale and used through ``exp`` with a clamp (the reference multiplied by the
raw parameter, which is neither a temperature nor bounded).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from m3d_components.models.vision import VisionTransformer3D

__all__ = ["M3DCLIP", "clip_loss", "gather_with_grad"]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along the batch axis whose backward returns each rank the summed gradient of its own slice.

    Every rank computes the same global loss, so the gradient of a rank's features is the sum over ranks of what
    each rank's loss sends back: an all-reduce, then the rank's own slice. (Equal per-rank batch sizes, as
    ``drop_last`` and an even sampler give.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = slice(rank * x.shape[0], (rank + 1) * x.shape[0])
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, E) from every rank in rank order, keeping the gradient path to each rank's part."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over the (N, N) image–text similarity of L2-normalised (N, E) features."""
    logits = logit_scale * image_embeds @ text_embeds.T  # (N images, N texts)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class M3DCLIP(nn.Module):
    """The CLIP pair of encoders with projection heads and a learnable temperature.

    Args:
        vision_encoder: a :class:`VisionTransformer3D` with a CLS token.
        text_encoder: a Hugging Face encoder (e.g. ``BertModel``) returning ``last_hidden_state``.
        embed_dim: the shared embedding size (768 in the paper).
        init_temperature: initial softmax temperature (0.07 as in CLIP, i.e. logit scale ln(1/0.07) ≈ 2.659).
        max_logit_scale: clamp on exp(log-scale), 100 as in CLIP, so training cannot blow the logits up.
        head_norm: ``"none"`` (paper: linear → L2 norm) or ``"batch"`` (linear → BatchNorm without affine → L2 norm).
            Freshly initialised small encoders give nearly the same feature for every input (cosine ≈ 0.99), and the
            contrastive loss then sits at ln(batch) for hundreds of steps; centring and scaling each feature over
            the batch removes that common part at once, so the demo learns in minutes.
    """

    def __init__(
        self,
        vision_encoder: VisionTransformer3D,
        text_encoder: nn.Module,
        embed_dim: int = 768,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        head_norm: str = "none",
    ) -> None:
        super().__init__()
        if not vision_encoder.config.cls_token:
            raise ValueError("the CLIP vision encoder needs a CLS token (ViTConfig.cls_token=True)")
        if not 0 < init_temperature < 1:
            raise ValueError(f"init_temperature must be in (0, 1), got {init_temperature}")
        if head_norm not in ("none", "batch"):
            raise ValueError(f"head_norm must be 'none' or 'batch', got {head_norm!r}")
        if getattr(text_encoder, "pooler", None) is not None:
            # The feature is [CLS] of the last hidden state; an unused pooler would leave DDP waiting for gradients.
            text_encoder.pooler = None
        self.vision_encoder = vision_encoder
        self.language_encoder = text_encoder
        self.mm_vision_proj = nn.Linear(vision_encoder.config.hidden_size, embed_dim)
        self.mm_language_proj = nn.Linear(text_encoder.config.hidden_size, embed_dim)
        self.vision_head_norm = nn.BatchNorm1d(embed_dim, affine=False) if head_norm == "batch" else nn.Identity()
        self.language_head_norm = nn.BatchNorm1d(embed_dim, affine=False) if head_norm == "batch" else nn.Identity()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_log_scale = math.log(max_logit_scale)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) → L2-normalised (B, E)."""
        features = self.mm_vision_proj(self.vision_encoder.cls_features(image))
        return F.normalize(self.vision_head_norm(features), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids → L2-normalised (B, E) from the [CLS] position."""
        hidden = self.language_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.language_head_norm(self.mm_language_proj(hidden[:, 0])), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Embeddings of both towers and the global-batch contrastive loss; images only when no text is given.

        Returns:
            ``loss`` (scalar), ``image_embeds`` and ``text_embeds`` (local (B, E)), ``logit_scale``; or only
            ``image_embeds`` without ``input_ids`` (embedding inference of volumes).
        """
        image_embeds = self.encode_image(image)
        if input_ids is None:
            return {"image_embeds": image_embeds}
        text_embeds = self.encode_text(input_ids, attention_mask)
        scale = self.scale()
        loss = clip_loss(gather_with_grad(image_embeds), gather_with_grad(text_embeds), scale)
        return {"loss": loss, "image_embeds": image_embeds, "text_embeds": text_embeds, "logit_scale": scale.detach()}
