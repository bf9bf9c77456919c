"""Image–text retrieval recall (M3D-Bench ITR).

Names follow the usual convention, which the reference printout had backwards: **IR** = image query ranking the
texts, **TR** = text query ranking the images. Pair ``i`` (image ``i``, text ``i``) is the only correct match.
Pools are the first ``n`` pairs of the evaluation order, so the 100-pool is inside the 500-pool and every run uses
the same pools.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["POOL_SIZES", "RECALL_KS", "query_hits", "recall_at_k", "retrieval_hits", "retrieval_metrics"]

POOL_SIZES = (100, 500, 1000, 2000)
RECALL_KS = (1, 5, 10)


def query_hits(similarity: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[int, torch.Tensor]:
    """Per query, whether its correct candidate is in the top k: ``{k: (N,) bool}`` for a square (N queries,
    N candidates) similarity matrix whose correct answers lie on the diagonal.

    A query's rank is the number of *other* candidates not scored strictly below its correct one: ties (and NaNs)
    count against the query, so a collapsed model whose embeddings are all alike — a constant similarity matrix —
    gets R@k = 0 for every k < N instead of a perfect score. Without ties this is the usual 0-based rank.
    """
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) matrix, got shape {tuple(similarity.shape)}")
    correct = similarity.diagonal().unsqueeze(1)  # (N, 1)
    beats = ~(similarity < correct)  # ties and NaN comparisons count as beating the correct candidate
    beats.fill_diagonal_(False)  # the correct candidate itself
    rank = beats.sum(dim=1)  # (N,)
    return {k: rank < k for k in ks}


def recall_at_k(similarity: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
    """Recall@k: the mean of :func:`query_hits`."""
    return {k: hits.float().mean().item() for k, hits in query_hits(similarity, ks).items()}


def retrieval_metrics(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    pool_sizes: Sequence[int] = POOL_SIZES,
    ks: Sequence[int] = RECALL_KS,
    prefix: str = "itr/",
) -> dict[str, float]:
    """IR and TR recall@k on nested pools, keyed ``itr/ir_r1@100`` … ``itr/tr_r10@2000``.

    Args:
        image_embeddings: (N, E), L2-normalised (cosine similarity = dot product).
        text_embeddings: (N, E), row ``i`` describing image ``i``.
        pool_sizes: pool sizes; those larger than N are left out, and when N is below all of them the whole set
            is one pool named by its size.
        ks: the recall cut-offs.
        prefix: key prefix (``"val/itr/"`` during training).
    """
    hits = retrieval_hits(image_embeddings, text_embeddings, pool_sizes, ks, prefix)
    return {name: h.float().mean().item() for name, h in hits.items()}


def retrieval_hits(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    pool_sizes: Sequence[int] = POOL_SIZES,
    ks: Sequence[int] = RECALL_KS,
    prefix: str = "itr/",
) -> dict[str, torch.Tensor]:
    """Per-query hits behind :func:`retrieval_metrics` (same keys), e.g. for bootstrap intervals of each recall."""
    if image_embeddings.shape != text_embeddings.shape or image_embeddings.ndim != 2:
        raise ValueError(
            f"expected two (N, E) embedding matrices of one shape, got {tuple(image_embeddings.shape)} "
            f"and {tuple(text_embeddings.shape)}"
        )
    n = image_embeddings.shape[0]
    pools = [p for p in pool_sizes if p <= n] or [n]
    similarity = image_embeddings.float() @ text_embeddings.float().T  # (N images, N texts)
    hits = {}
    for pool in pools:
        sub = similarity[:pool, :pool]
        for direction, matrix in (("ir", sub), ("tr", sub.T)):
            for k, value in query_hits(matrix, ks).items():
                hits[f"{prefix}{direction}_r{k}@{pool}"] = value
    return hits
