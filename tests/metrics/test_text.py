"""BLEU-1 per sample equals a direct sacrebleu call."""

import pytest
from sacrebleu.metrics import BLEU

from m3d_components.metrics.text import bleu1


def test_bleu1_matches_sacrebleu_and_brevity_penalty_applies():
    predictions = ["Axial CT of the upper abdomen.", "Liver", " the the the "]
    references = ["Axial CT of the upper abdomen in the arterial phase.", "Liver", "The liver is normal."]
    direct = BLEU(max_ngram_order=1, effective_order=True)
    expected = [direct.sentence_score(p.strip(), [r.strip()]).score / 100 for p, r in zip(predictions, references)]
    assert bleu1(predictions, references) == pytest.approx(expected, abs=1e-9)
    assert bleu1(["Liver"], ["Liver"]) == [pytest.approx(1.0)]
    assert 0 < bleu1(predictions[:1], references[:1])[0] < 0.7  # 6 of 6 unigrams right but too short


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        bleu1(["a", "b"], ["a"])
