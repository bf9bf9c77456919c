"""Retrieval recall as an Ignite metric: collect embeddings over an epoch, score them once at the end."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import ignite.distributed as idist
import torch
from ignite.metrics import Metric

from m3d_components.metrics.retrieval import POOL_SIZES, RECALL_KS, retrieval_metrics

__all__ = ["RetrievalRecall", "embeddings_from_output", "recall_metrics"]


def embeddings_from_output(output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, text) embeddings of an engine output whose ``pred`` is the CLIP forward's dict."""
    pred = output["pred"]
    return pred["image_embeds"], pred["text_embeds"]


class RetrievalRecall(Metric):
    """IR/TR Recall@k over the whole evaluation set (see :func:`m3d_components.metrics.retrieval.retrieval_metrics`).

    Under DDP the embeddings of all ranks are gathered before scoring; pairs stay aligned, but the pool order then
    follows the sampler, so compare pool-restricted numbers from single-process evaluation.

    Args:
        pool_sizes, ks, prefix: as in ``retrieval_metrics``.
        summary: if True, ``compute`` returns one number — the mean of IR and TR R@1 on the largest pool — for use
            as the key metric (best checkpoint, early stopping); else the dict of every recall.
        output_transform: engine output → (image (B, E), text (B, E)) embeddings.
    """

    def __init__(
        self,
        pool_sizes: Sequence[int] = POOL_SIZES,
        ks: Sequence[int] = RECALL_KS,
        prefix: str = "val/itr/",
        summary: bool = False,
        output_transform: Callable = embeddings_from_output,
        device: str | torch.device = "cpu",
    ) -> None:
        self.pool_sizes, self.ks, self.prefix, self.summary = tuple(pool_sizes), tuple(ks), prefix, summary
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._images: list[torch.Tensor] = []
        self._texts: list[torch.Tensor] = []

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        images, texts = output
        self._images.append(images.detach().float().cpu())
        self._texts.append(texts.detach().float().cpu())

    def compute(self) -> dict[str, float] | float:
        if not self._images:
            raise RuntimeError("RetrievalRecall has no embeddings: the evaluator ran no iteration")
        images = idist.all_gather(torch.cat(self._images))
        texts = idist.all_gather(torch.cat(self._texts))
        metrics = retrieval_metrics(images, texts, self.pool_sizes, self.ks, self.prefix)
        if not self.summary:
            return metrics
        largest = max(int(k.rsplit("@", 1)[1]) for k in metrics)
        return (metrics[f"{self.prefix}ir_r1@{largest}"] + metrics[f"{self.prefix}tr_r1@{largest}"]) / 2


def recall_metrics(prefix: str = "val/itr/") -> tuple[dict[str, RetrievalRecall], dict[str, RetrievalRecall]]:
    """(key metric, additional metrics) for an evaluator: ``<prefix>mean_r1`` and every ``<prefix>{ir,tr}_r{k}@{n}``.

    Built here so the metric names follow the prefix (``val/itr/`` in training, ``itr/`` in evaluation).
    """
    return {f"{prefix}mean_r1": RetrievalRecall(prefix=prefix, summary=True)}, {
        f"{prefix}recall": RetrievalRecall(prefix=prefix)
    }
