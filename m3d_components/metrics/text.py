"""Text similarity for generated reports and answers, computed by sacrebleu (no hand-written n-gram counting)."""

from __future__ import annotations

from collections.abc import Sequence

from sacrebleu.metrics import BLEU

__all__ = ["bleu1"]

_BLEU1 = BLEU(max_ngram_order=1, effective_order=True)


def bleu1(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-sample BLEU-1 in [0, 1] with brevity penalty (the published protocol: unigram BLEU, 13a tokenizer)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return [_BLEU1.sentence_score(p.strip(), [r.strip()]).score / 100 for p, r in zip(predictions, references)]
