"""The LLM check's verdicts, rewording parsing, and template-based segmentation instructions."""

from __future__ import annotations

import json
import random

import pytest

from m3d_components.data.boxes import format_box
from m3d_components.data.demo.phantom import CLASSES
from m3d_components.data.generation.check import check_prompt, parse_verdict, pass_rate_summary
from m3d_components.data.generation.paraphrase import paraphrase_prompt, parse_paraphrases
from m3d_components.data.generation.seg_instructions import (
    TASK_VARIANTS,
    default_term_dictionary,
    instructions_for,
    merged_term_dictionary,
)
from m3d_components.data.tokens import BOX_START, SEG_TOKEN

CHOICES = {"A": "Axial", "B": "Coronal", "C": "Sagittal", "D": "Oblique"}


@pytest.mark.parametrize(
    "reply, verdict",
    [
        (" Yes. The report says the images are coronal.", 1),
        ("no - the report describes axial images", 0),
        ("**Yes**, consistent.", 1),
        ("The answer is consistent, so yes.", 1),
        ("The report supports the answer.", -1),
        ("Yes and no: the plane is not stated.", 1),
        ("It is unclear whether yes or no.", -1),
        ("", -1),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply)[0] == verdict


def test_verdict_reason_is_the_rest_of_the_reply():
    assert parse_verdict("Yes. The report says coronal.") == (1, "The report says coronal.")


def test_check_prompt_names_the_item_and_refuses_a_bad_letter():
    messages = check_prompt("Coronal CT.", "Which plane?", CHOICES, "B")
    assert messages[0]["role"] == "system" and "Proposed answer: B. Coronal" in messages[1]["content"]
    with pytest.raises(ValueError, match="letter 'E'"):
        check_prompt("Coronal CT.", "Which plane?", CHOICES, "E")


def test_pass_rate_counts_unclear_replies_apart():
    summary = pass_rate_summary([1, 1, 1, 0, -1])
    assert summary["pass_rate"] == 0.6 and (summary["failed"], summary["unclear"]) == (1, 1)
    assert summary["paper_pass_rate"] == pytest.approx(13_729 / 13_814, abs=1e-4)
    assert pass_rate_summary([])["pass_rate"] is None


def test_parse_paraphrases_keeps_only_usable_rewordings():
    original = "the organ that stores bile under the liver"
    reply = (
        "Sure! Here are some:\n1. the small sac beneath the liver that keeps bile\n2) The organ that stores bile under "
        "the liver.\n- a pouch holding bile\n3. it\n4. the [SEG] organ\n5. <the organ>\n6. the small sac beneath the "
        "liver that keeps bile\n7. A sac for bile. It sits under the liver.\n8. Here are more rewordings:\n"
        "9. the reservoir of bile below the liver"
    )
    assert parse_paraphrases(reply, original, 5) == [
        "the small sac beneath the liver that keeps bile", "a pouch holding bile",
        "the reservoir of bile below the liver",
    ]
    assert len(parse_paraphrases(reply, original, 1)) == 1
    assert "3 different ways" in paraphrase_prompt(original, 3)[1]["content"]


def test_builtin_dictionary_covers_the_demo_organs_and_later_files_win(tmp_path):
    builtin = default_term_dictionary()
    assert set(CLASSES) <= set(builtin)
    assert all(isinstance(d, str) and d for defs in builtin.values() for d in defs)
    override = tmp_path / "terms.json"
    override.write_text(json.dumps({"liver": ["my own definition"], "new organ": ["something new"]}))
    merged = merged_term_dictionary([override])
    assert merged["liver"] == ["my own definition"] and merged["spleen"] == builtin["spleen"]
    assert set(merged_term_dictionary([override], builtin=False)) == {"liver", "new organ"}


def test_instructions_for_a_positive_mask_carry_its_box_or_one_seg():
    box = [0.1, 0.2, 0.3, 0.5, 0.6, 0.7]
    made = instructions_for("liver", box, ["the organ that makes bile"], random.Random(0))
    assert [(m["task"], m["variant"]) for m in made] == list(TASK_VARIANTS)
    by = {(m["task"], m["variant"]): m for m in made}
    assert format_box(box) in by["rec", "label"]["answer"] and "liver" in by["rec", "label"]["question"]
    assert format_box(box) in by["reg", "definition"]["question"]
    assert "the organ that makes bile" in by["rec", "definition"]["question"]
    assert by["ss", "label"]["answer"].count(SEG_TOKEN) == 1 and by["res", "definition"]["answer"].count(SEG_TOKEN) == 1
    assert made == instructions_for("liver", box, ["the organ that makes bile"], random.Random(0))


def test_negatives_have_no_box_and_no_seg_and_classes_without_definitions_get_label_variants():
    made = instructions_for("spleen", None, [], random.Random(1))
    assert [(m["task"], m["variant"]) for m in made] == [("rec", "label"), ("reg", "label"), ("ss", "label")]
    for m in made:
        assert m["box"] is None and BOX_START not in m["question"] + m["answer"] and SEG_TOKEN not in m["answer"]
