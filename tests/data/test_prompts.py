from __future__ import annotations

import random
import string

import pytest

from m3d_components.data.boxes import parse_boxes
from m3d_components.data.prompts import (
    CAPTION_QUESTIONS,
    REC_CLASS,
    REC_DESCRIPTION,
    REG_CLASS,
    REG_DESCRIPTION,
    SEG_CLASS,
    TEMPLATE_FAMILIES,
    caption_example,
    closed_vqa_example,
    open_vqa_example,
    rec_example,
    refseg_example,
    reg_example,
    seg_example,
    with_image_tokens,
)
from m3d_components.data.tokens import BOX_START, IMAGE_TOKEN, SEG_TOKEN

BOX = [0.125, 0.32, 0.281, 0.719, 0.754, 0.695]
DEFINITION = "It filters blood and makes urine."
SEEDS = range(200)  # enough draws to visit every template of the longest list with near certainty


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


# Placeholders each list must use: (family name, part) -> required fields; anything else is a typo.
REQUIRED = {
    ("rec_class", "questions"): {"name"},
    ("rec_class", "answers"): {"box"},
    ("rec_class", "negatives"): {"name"},
    ("rec_description", "questions"): {"definition"},
    ("rec_description", "answers"): {"name", "box"},
    ("rec_description", "negatives"): {"name"},
    ("reg_class", "questions"): {"box"},
    ("reg_class", "answers"): {"name"},
    ("reg_class", "negatives"): {"name"},
    ("reg_description", "questions"): {"box"},
    ("reg_description", "answers"): {"name", "definition"},
    ("reg_description", "negatives"): {"name"},
    ("seg_class", "questions"): {"name"},
    ("seg_class", "answers"): {"seg"},
    ("seg_class", "negatives"): {"name"},
    ("seg_description", "questions"): {"definition"},
    ("seg_description", "answers"): {"name", "seg"},
    ("seg_description", "negatives"): {"name"},
}
ALLOWED_EXTRA = {("seg_class", "answers"): {"name"}}


@pytest.mark.parametrize(("family", "part"), list(REQUIRED))
def test_template_placeholders(family, part):
    templates = getattr(TEMPLATE_FAMILIES[family], part)
    assert len(templates) >= 6
    assert len(set(templates)) == len(templates), "duplicate template"
    allowed = REQUIRED[family, part] | ALLOWED_EXTRA.get((family, part), set())
    for template in templates:
        fields = _fields(template)
        assert REQUIRED[family, part] <= fields, template
        assert fields <= allowed, template


def test_template_counts_follow_the_reference():
    assert len(CAPTION_QUESTIONS) >= 40 and not any(_fields(q) for q in CAPTION_QUESTIONS)
    assert len(TEMPLATE_FAMILIES) == 6
    assert min(len(REC_CLASS.answers), len(REC_DESCRIPTION.questions), len(REG_CLASS.questions)) >= 30


def test_caption_and_open_vqa():
    question, answer = caption_example("  Liver is normal.\n", random.Random(3))
    assert question in CAPTION_QUESTIONS
    assert answer == "Liver is normal."
    assert open_vqa_example("Which plane?", "Axial") == ("Which plane?", "Axial")
    with pytest.raises(ValueError, match="report"):
        caption_example(" ", random.Random(0))


def test_closed_vqa_format_is_exact():
    choices = {"A": "Axial", "B": "Coronal", "C": "Sagittal", "D": "NA"}
    question, answer = closed_vqa_example("In which plane is the image?", choices, "B")
    assert question == "In which plane is the image? Choices: A. Axial B. Coronal C. Sagittal D. NA"
    assert answer == "B. Coronal"


@pytest.mark.parametrize("letter", ["E", "b", "", "AB"])
def test_closed_vqa_rejects_bad_letter(letter):
    with pytest.raises(ValueError, match="answer_letter"):
        closed_vqa_example("Q?", {"A": "1", "B": "2", "C": "3", "D": "4"}, letter)


def test_closed_vqa_rejects_missing_choice():
    with pytest.raises(ValueError, match="'D'"):
        closed_vqa_example("Q?", {"A": "1", "B": "2", "C": "3"}, "A")


@pytest.mark.parametrize("definition", [None, DEFINITION])
def test_rec_positive_box_parses_back(definition):
    for seed in SEEDS:
        question, answer = rec_example("left kidney", BOX, random.Random(seed), definition=definition)
        assert parse_boxes(answer) == [BOX]
        assert answer.count(BOX_START) == 1
        assert ("left kidney" in question) == (definition is None)
        assert (DEFINITION in question) == (definition is not None)
        if definition is not None:
            assert "left kidney" in answer
        assert "{" not in question + answer and "}" not in question + answer


@pytest.mark.parametrize("definition", [None, DEFINITION])
def test_rec_negative_has_no_box(definition):
    for seed in SEEDS:
        question, answer = rec_example("spleen", None, random.Random(seed), definition=definition)
        assert "spleen" in answer
        assert parse_boxes(answer) == [] and BOX_START not in answer and SEG_TOKEN not in answer


@pytest.mark.parametrize("definition", [None, DEFINITION])
def test_reg_positive_has_box_in_question_and_class_in_answer(definition):
    for seed in SEEDS:
        question, answer = reg_example("liver", BOX, random.Random(seed), definition=definition)
        assert parse_boxes(question) == [BOX]
        assert "liver" in answer and BOX_START not in answer
        assert (DEFINITION in answer) == (definition is not None)


@pytest.mark.parametrize("definition", [None, DEFINITION])
def test_reg_negative_asks_like_rec(definition):
    rec_questions = (REC_CLASS if definition is None else REC_DESCRIPTION).questions
    negatives = (REG_CLASS if definition is None else REG_DESCRIPTION).negatives
    values = {"name": "liver", "definition": DEFINITION}
    for seed in SEEDS:
        question, answer = reg_example("liver", None, random.Random(seed), definition=definition)
        assert question in {q.format(**values) for q in rec_questions}
        assert answer in {a.format(**values) for a in negatives}
        assert BOX_START not in question + answer


@pytest.mark.parametrize("definition", [None, DEFINITION])
def test_seg_token_exactly_once_when_present_never_when_absent(definition):
    for seed in SEEDS:
        _, positive = seg_example("aorta", True, random.Random(seed), definition=definition)
        _, negative = seg_example("aorta", False, random.Random(seed), definition=definition)
        assert positive.count(SEG_TOKEN) == 1
        assert SEG_TOKEN not in negative and "aorta" in negative
        assert "{" not in positive + negative


def test_every_template_is_reachable():
    seen = {seg_example("aorta", True, random.Random(seed))[1] for seed in range(1000)}
    assert len(seen) == len(SEG_CLASS.answers)


def test_seeded_rng_is_deterministic():
    def draw(seed: int) -> list[tuple[str, str]]:
        rng = random.Random(seed)
        return [rec_example("liver", BOX, rng), seg_example("liver", True, rng, DEFINITION), caption_example("R.", rng)]

    assert draw(7) == draw(7)
    assert any(draw(7) != draw(seed) for seed in range(8, 20))


@pytest.mark.parametrize("box", [[1, 2, 3, 4, 5, 6], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5, float("nan")]])
def test_bad_boxes_rejected(box):
    with pytest.raises(ValueError, match="normalised"):
        rec_example("liver", box, random.Random(0))


def test_empty_names_rejected():
    with pytest.raises(ValueError, match="class_name"):
        seg_example(" ", True, random.Random(0))
    with pytest.raises(ValueError, match="definition"):
        seg_example("liver", True, random.Random(0), definition="")


def test_refseg_needs_exactly_one_seg_token():
    pair = ("Where is the cyst?", "The cyst is here [SEG].")
    assert refseg_example(*pair) == pair
    for answer in ["No mask.", "[SEG] and [SEG]", "<SEG>"]:
        with pytest.raises(ValueError, match="exactly one"):
            refseg_example("Q?", answer)


def test_with_image_tokens_layout():
    assert with_image_tokens("Where is the liver?", 3, caption=False) == IMAGE_TOKEN * 3 + " Where is the liver?"
    assert with_image_tokens("Describe it.", 3, caption=True) == IMAGE_TOKEN * 3 + "Describe it."
    assert with_image_tokens("Q", 256, caption=False).count(IMAGE_TOKEN) == 256
    with pytest.raises(ValueError, match="n_image_tokens"):
        with_image_tokens("Q", -1, caption=False)


def test_answer_variants_keep_one_wording_per_outcome():
    rng = random.Random(0)
    present = {seg_example("liver", True, rng, answer_variants=1)[1] for _ in range(30)}
    absent = {seg_example("liver", False, rng, answer_variants=1)[1] for _ in range(30)}
    assert present == {SEG_CLASS.answers[0].format(name="liver", seg=SEG_TOKEN)}
    assert absent == {SEG_CLASS.negatives[0].format(name="liver")}
    boxes = {rec_example("liver", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], rng, answer_variants=2)[1] for _ in range(40)}
    assert len(boxes) == 2
    assert len({seg_example("liver", True, rng)[1] for _ in range(200)}) == len(SEG_CLASS.answers)
    with pytest.raises(ValueError, match="answer_variants"):
        seg_example("liver", True, rng, answer_variants=0)
