"""VQA generation: prompts, parsing of scripted LLM replies, and every self-filtering rule."""

from __future__ import annotations

import pandas as pd
import pytest

from m3d_components.data.generation.vqa import (
    EXAMPLE_REPORT,
    FILTERS,
    GUIDED_LAYOUT,
    REPLY_PREFIX,
    TOPIC_PLAN,
    Draft,
    FilterLimits,
    continue_layout,
    filter_drafts,
    parse_reply,
    question_prompts,
)
from m3d_components.data.vqa import QUESTION_TYPES, read_vqa_csv
from tests.data.conftest import write_volume

REPORT = "Axial CT of the abdomen in the arterial phase. A 3 cm cyst is seen in the left kidney."


def test_prompts_follow_the_published_topic_order_with_a_worked_example():
    prompts = question_prompts(REPORT)
    assert [t.question_type for t in TOPIC_PLAN] == [1, 2, 3, 4, 4, 4, 5, 5, 5]
    assert set(t.question_type for t in TOPIC_PLAN) == set(QUESTION_TYPES)
    assert len(prompts) == 9 and len({p[-1]["content"] for p in prompts}) == 9  # greedy decoding still differs
    for prompt, topic in zip(prompts, TOPIC_PLAN):
        assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
        assert REPORT in prompt[-1]["content"] and EXAMPLE_REPORT in prompt[1]["content"]
        assert topic.aspect in prompt[-1]["content"]
        assert topic.example[0] in prompt[2]["content"]
    assert len(question_prompts(REPORT, 3)) == 3
    with pytest.raises(ValueError, match="empty"):
        question_prompts("  ")
    with pytest.raises(ValueError, match="1–9"):
        question_prompts(REPORT, 10)


def _guided(*outputs: str) -> str:
    """Run the guided layout on scripted step outputs (what the LLM writes after each primed prefix)."""
    reply = REPLY_PREFIX
    for (keep, follow, _), output in zip(GUIDED_LAYOUT, outputs):
        reply = continue_layout(reply + output, reply, keep, follow)
    return reply


def test_guided_layout_keeps_one_line_per_step():
    final = _guided(" Which plane is this?\nSure! Here it is", " Axial B. Sagittal C. Coronal D. Oblique\nAnswer: A",
                    " C. Coronal\n\nExplanation: …")
    assert final == ("Question: Which plane is this?\nChoice: A. Axial B. Sagittal C. Coronal D. Oblique\n"
                     "Answer: C. Coronal")
    assert parse_reply(final, 1) == Draft(
        1, "Which plane is this?", {"A": "Axial", "B": "Sagittal", "C": "Coronal", "D": "Oblique"}, "C", "Coronal")


def test_guided_layout_keeps_choices_written_one_per_line():
    final = _guided(" Which organ is shown?\nA. Liver", " Liver\nB. Lung\nC) Kidney\nD. Spleen\nExplanation: x",
                    " B")
    draft = parse_reply(final, 3)
    assert draft.choices == {"A": "Liver", "B": "Lung", "C": "Kidney", "D": "Spleen"} and draft.letter == "B"


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("Question: Which plane?\nChoice: A. Axial B. Sagittal C. Coronal D. Oblique\nAnswer: B. Sagittal",
         ("Which plane?", ["Axial", "Sagittal", "Coronal", "Oblique"], "B", "Sagittal")),
        # markdown, "Options:", one choice per line, "The correct answer is"
        ("**Question 3:** Which organ is shown?\nOptions:\nA) Liver\nB) Spleen\nC) Kidney\nD) Lung\n\n"
         "The correct answer is C", ("Which organ is shown?", ["Liver", "Spleen", "Kidney", "Lung"], "C", None)),
        # the text of the answer without its letter, a doubled choice letter
        ("Question: What is seen?\nChoice: A. A. Cyst B. Mass C. Stone D. Air\nAnswer: Mass",
         ("What is seen?", ["Cyst", "Mass", "Stone", "Air"], None, "Mass")),
        # markdown around the answer, lower-case markers
        ("Question: Which organ?\nChoice: a. Liver b. Lung c. Kidney d. Spleen\n**Answer:** b. Lung",
         ("Which organ?", ["Liver", "Lung", "Kidney", "Spleen"], "B", "Lung")),
        ("Question: Which organ?\nChoice: A. Liver B. Lung C. Kidney D. Spleen\nAnswer: **B**",
         ("Which organ?", ["Liver", "Lung", "Kidney", "Spleen"], "B", None)),
        # nothing but prose
        ("I cannot write questions about this.", ("", [], None, None)),
    ],
)
def test_parse_reply_reads_the_usual_deviations(reply, expected):
    draft = parse_reply(reply, 4)
    question, choices, letter, answer = expected
    assert draft.number == 4
    assert (draft.question, list(draft.choices.values()), draft.letter, draft.answer) == (
        question, choices, letter, answer)


def _draft(number=1, question="Which plane is this scan in?", choices=("Axial", "Sagittal", "Coronal", "Oblique"),
           letter="C", answer="Coronal") -> Draft:
    return Draft(number, question, dict(zip("ABCD", choices)), letter, answer)


def test_each_rule_removes_what_it_names_and_counts_it():
    drafts = [
        _draft(),                                                                  # kept
        _draft(2, "What phase is the scan in?", ("Arterial", "Venous", "Delayed", "Non-contrast"), "B", None),  # kept
        _draft(3, "Which organ is seen?", ("Liver", "Spleen", "Kidney", ""), "A", "Liver"),           # malformed
        _draft(3, "<question>", ("<choice>",) * 4, "A", None),                                        # malformed
        _draft(10),                                                                # malformed: beyond the plan
        _draft(1, "In which plane is this scan shown?", ("Axial", "Coronal", "Sagittal", "Oblique"), "A", "Axial"),
        _draft(3, "Which organ is enlarged here?", ("Liver", "Spleen", "Kidney", "Lung"), "A", "Brain"),
        _draft(3, "Which organ is enlarged in this scan?", ("Liver", "Spleen", "Kidney", "Lung"), "A", "Spleen"),
        _draft(4, "What lesion is in the liver?", ("Cyst", "Cyst", "Mass", "Stone"), "A", "Cyst"),
        _draft(4, "According to the report, what is seen?", ("Cyst", "Mass", "Stone", "Air"), "B", "Mass"),
        _draft(7, "Where is the cyst in the left kidney located?", ("Left kidney", "Liver", "Spleen", "Lung"), "A",
               "Left kidney"),
        _draft(5, "Size?", ("1 cm", "2 cm", "3 cm", "4 cm"), "B", "2 cm"),
        _draft(6, "What else is seen?", ("A very long choice " * 4, "Air", "Fluid", "Stone"), "B", "Air"),
        _draft(1),                                                                 # duplicate of the first
    ]
    kept, removed = filter_drafts(drafts)
    assert [item.question for item in kept] == ["Which plane is this scan in?", "What phase is the scan in?"]
    assert [item.question_type for item in kept] == [1, 2]
    assert kept[0].letter == "C" and kept[1].letter == "B"
    assert removed == {"malformed": 3, "copied_example": 1, "answer_not_in_choices": 1, "inconsistent_letter": 1,
                       "duplicate_choices": 1, "mentions_source": 1, "answer_in_question": 1, "length": 2,
                       "duplicate": 1}
    assert set(removed) <= set(FILTERS)


def test_letter_and_text_agree_when_the_text_paraphrases_the_choice():
    kept, removed = filter_drafts([
        _draft(letter="C", answer="Coronal plane"), _draft(2, "Which plane is shown?", letter=None, answer="Axial")])
    assert [i.letter for i in kept] == ["C", "A"] and not removed
    _, removed = filter_drafts([_draft(letter=None, answer="Coronal or axial")])  # names two choices: ambiguous
    assert removed == {"answer_not_in_choices": 1}


def test_a_question_naming_every_choice_is_not_an_answer_leak():
    draft = _draft(3, "Is the lesion in the liver or the spleen?", ("Liver", "Spleen", "Kidney", "Lung"), "A", "Liver")
    kept, _ = filter_drafts([draft])
    assert len(kept) == 1


def test_length_limits_are_options():
    draft = _draft(question="Which plane is this scan in, considering all of the slices shown?")
    assert filter_drafts([draft], FilterLimits(max_question_words=5))[1] == {"length": 1}
    assert len(filter_drafts([draft], FilterLimits(max_question_words=40))[0]) == 1


def test_kept_items_are_rows_the_vqa_reader_accepts(tmp_path):
    write_volume(tmp_path / "ct.npy")
    kept, _ = filter_drafts([_draft(), _draft(3, "Which organ is shown?", ("Liver", "Spleen", "Kidney", "Lung"), "D",
                                              "Lung")])
    path = tmp_path / "vqa.csv"
    pd.DataFrame([item.row("ct.npy", REPORT) for item in kept]).to_csv(path, index=False)
    records = read_vqa_csv(path)
    assert [(r["question_type"], r["answer_letter"], r["answer_text"], r["report"]) for r in records] == [
        (1, "C", "Coronal", REPORT), (3, "D", "Lung", REPORT)]
