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
    assert parse_choice(hedge, CHOICES) is None and not strict_correct(hedge, "A")
    assert parse_choice("A. Axial. B. Sagittal is wrong because", CHOICES) is None
    letters = {"A": "Type A dissection", "B": "Hepatitis C", "C": "Vitamin D deficiency", "D": "NA"}
    assert parse_choice("A. Type A dissection (Stanford A).", letters) == "A"  # letters inside options are not options
    assert parse_choice("B. Hepatitis C.", letters) == "B"
    assert not lenient_correct("B Sagittal", "B") and strict_correct("B Sagittal", "B", CHOICES)


def test_option_texts_are_matched_as_whole_words_and_placeholders_never():
    """An empty choice is read as "NA"; "na" inside "adrenal" or "renal" must not make the answer ambiguous."""
    choices = {"A": "Adrenal gland", "B": "Kidney", "C": "NA", "D": "NA"}
    assert parse_choice("The adrenal gland.", choices) == "A"
    assert parse_choice("It is NA", choices) is None
    organs = {"A": "Liver", "B": "Liver cyst", "C": "Spleen", "D": "Kidney"}
    assert parse_choice("a liver cyst", organs) == "B"  # "liver" only inside the longer option
    assert parse_choice("the liver and the spleen", organs) is None
    assert parse_choice("delivery", organs) is None
