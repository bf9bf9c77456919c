"""Closed-VQA scoring: the published substring rule and the strict parser."""

import pytest

from m3d_components.metrics.choice import lenient_correct, parse_choice, strict_correct

CHOICES = {"A": "Axial", "B": "Sagittal", "C": "Coronal", "D": "Oblique"}


@pytest.mark.parametrize(
    "text, letter",
    [("B. Sagittal", "B"), ("B", "B"), ("(B) Sagittal", "B"), ("B) Sagittal", "B"), ("C: Coronal", "C"),
     ("Sagittal", "B"), ("It is sagittal.", "B"), ("Axial or coronal", None), ("", None), ("Bladder", None)],
)
def test_parse_choice(text, letter):
    assert parse_choice(text, CHOICES) == letter


def test_lenient_rule_accepts_an_answer_listing_every_option_strict_does_not():
    hedge = "A. Axial B. Sagittal C. Coronal D. Oblique"
    assert all(lenient_correct(hedge, letter) for letter in "ABCD")
    assert strict_correct(hedge, "A") and not strict_correct(hedge, "B")
    assert not lenient_correct("B Sagittal", "B") and strict_correct("B Sagittal", "B", CHOICES)
