"""Instruction templates and the (question, answer) pairs built from them for every M3D-LaMed task.

The wording is our own; the structure follows the published recipe: each task has lists of question phrasings,
answer phrasings and (for grounding and segmentation) answers for an absent target, one of each drawn uniformly at
random per sample. Every builder takes a :class:`random.Random`, so an evaluation set is reproducible by seeding one
generator per sample index, e.g. ``rec_example("liver", box, random.Random(index))``.

Placeholders in the templates are ``{name}`` (class name), ``{definition}`` (a term-dictionary sentence), ``{box}``
(a box written by :func:`~m3d_components.data.boxes.format_box`) and ``{seg}`` (the ``[SEG]`` token). Answers for an
absent target never carry a box or ``[SEG]``, so the model learns to refuse instead of inventing a location.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from m3d_components.data.boxes import format_box
from m3d_components.data.tokens import IMAGE_TOKEN, SEG_TOKEN

__all__ = [
    "CAPTION_QUESTIONS",
    "CHOICE_LETTERS",
    "REC_CLASS",
    "REC_DESCRIPTION",
    "REG_CLASS",
    "REG_DESCRIPTION",
    "SEG_CLASS",
    "SEG_DESCRIPTION",
    "TEMPLATE_FAMILIES",
    "TemplateFamily",
    "caption_example",
    "closed_vqa_example",
    "open_vqa_example",
    "rec_example",
    "refseg_example",
    "reg_example",
    "seg_example",
    "with_image_tokens",
]

CHOICE_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class TemplateFamily:
    """Question, answer and absent-target answer phrasings of one task variant."""

    questions: tuple[str, ...]
    answers: tuple[str, ...]
    negatives: tuple[str, ...]


CAPTION_QUESTIONS = (
    "Please write a radiology report for this scan.",
    "Describe the findings in this 3D scan.",
    "What does this scan show? Write a report.",
    "Summarise this image as a radiologist would.",
    "Give a detailed description of this medical image.",
    "Produce the findings section for this study.",
    "Can you write up the imaging findings for this volume?",
    "Report on what you see in this scan.",
    "Draft a diagnostic report for this image.",
    "Provide a caption for this 3D medical image.",
    "Explain the key observations in this scan.",
    "What are the notable findings in this volume?",
    "Write a concise report describing this study.",
    "Interpret this scan and describe it in words.",
    "Generate a radiological description of this image.",
    "Please describe this image in the style of a clinical report.",
    "List and describe the findings visible in this scan.",
    "Tell me what this medical image shows.",
    "Compose a report for this examination.",
    "How would you report this scan?",
    "Give me a short radiology write-up of this image.",
    "Please caption this volume with its findings.",
    "Describe any abnormal and normal structures in this scan.",
    "What would a radiologist write about this image?",
    "Provide an interpretation of this medical volume.",
    "Summarise the imaging findings of this study.",
    "Write down the findings you observe in this image.",
    "Describe this scan in detail, please.",
    "Produce a textual description of this 3D image.",
    "Could you generate a report for this study?",
    "What can be seen in this volume? Please describe it.",
    "Put the findings of this scan into words.",
    "Create a medical report that matches this image.",
    "Describe the appearance of this scan for a referring doctor.",
    "Write a caption summarising this medical image.",
    "Explain what this image shows, as in a radiology report.",
    "Please review this scan and report your findings.",
    "Outline the findings and impression for this volume.",
    "Give a description of the anatomy and any pathology in this image.",
    "Report the observations from this imaging study.",
)

REC_CLASS = TemplateFamily(
    questions=(
        "Where is the {name} in this image? Please give its box.",
        "Locate the {name} and answer with a bounding box.",
        "Find the {name} in this scan and output its coordinates.",
        "Can you show me where the {name} is, as a box?",
        "Please mark the {name} with a 3D bounding box.",
        "What is the bounding box of the {name}?",
        "Give the box coordinates of the {name} in this volume.",
        "Where can the {name} be found? Output a box.",
        "Identify the position of the {name} with a bounding box.",
        "Return the location of the {name} as box coordinates.",
        "In this scan, where does the {name} lie? Please answer with a box.",
        "Show the region occupied by the {name} using a box.",
        "Draw a bounding box around the {name}.",
        "Which box contains the {name} in this image?",
        "Please localise the {name} and give its coordinates.",
        "Could you find the {name} and report its bounding box?",
        "Output the coordinates of the box enclosing the {name}.",
        "Point out the {name} in this volume with a box.",
        "Detect the {name} and provide its bounding box.",
    ),
    answers=(
        "The box is {box}.",
        "Coordinates: {box}.",
        "It is located at {box}.",
        "Here is the bounding box: {box}.",
        "You can find it at {box}.",
        "Its bounding box is {box}.",
        "The target lies within {box}.",
        "Sure, the box is {box}.",
        "Found it at {box}.",
        "Located at {box}.",
        "The region is {box}.",
        "It occupies {box}.",
        "Bounding box: {box}.",
        "The coordinates are {box}.",
        "It can be seen at {box}.",
        "The box enclosing it is {box}.",
        "Position: {box}.",
        "I found it within {box}.",
        "It sits at {box}.",
        "Here it is: {box}.",
        "The location is {box}.",
        "Sure, it is at {box}.",
        "Its coordinates are {box}.",
        "It is inside the box {box}.",
        "The requested box is {box}.",
        "Box coordinates: {box}.",
        "Of course, it lies at {box}.",
        "The structure is at {box}.",
        "It appears at {box}.",
        "Answer: {box}.",
    ),
    negatives=(
        "Sorry, I cannot find the {name} in this image.",
        "There is no {name} in this scan.",
        "The {name} is not visible here.",
        "I don't see the {name} in this volume.",
        "No {name} appears in this image.",
        "The {name} is absent from this scan.",
        "This image does not contain the {name}.",
        "Sorry, the {name} is not present here.",
        "I could not locate any {name} in this scan.",
        "The {name} cannot be seen in this volume.",
        "There is no visible {name}, so I cannot give a box.",
        "The {name} is outside this image.",
        "Nothing in this scan corresponds to the {name}.",
        "Unfortunately, this image shows no {name}.",
        "The {name} does not appear in this volume.",
    ),
)

REC_DESCRIPTION = TemplateFamily(
    questions=(
        "Description: {definition} Where is this structure? Please give its box.",
        "{definition} Locate the structure described above with a bounding box.",
        "Based on this description: {definition} Find the target and output its box.",
        "{definition} Which structure is this, and where is it? Answer with a box.",
        "Here is a description: {definition} Please identify it and give its coordinates.",
        "Read this: {definition} Name the structure and mark it with a box.",
        "{definition} Please find this in the image and provide a bounding box.",
        "Description: {definition} What is it and where is it located? Please include a box.",
        "{definition} Identify the structure this describes and output its bounding box.",
        "Consider the following: {definition} Locate it in this volume and answer with coordinates.",
        "{definition} Can you find this structure and give its box?",
        "Definition: {definition} Please name the target and localise it with a box.",
        "{definition} Where in this scan is the structure described? Give the box.",
        "The following describes an anatomical structure: {definition} Find it and provide its coordinates.",
        "{definition} Please answer with the name of the structure and its bounding box.",
        "Description: {definition} Detect the target and return its box.",
        "{definition} Show me where it is by outputting a box.",
        "According to this description: {definition} What is the target, and what is its bounding box?",
        "{definition} Find the matching structure in the image and box it.",
        "Hint: {definition} Localise this target with a 3D box.",
        "{definition} Which part of the image does this refer to? Answer with a box.",
        "Description: {definition} Please identify and localise it.",
        "{definition} Tell me what this is and draw a box around it.",
        "Using the following description, find the target. {definition} Output its bounding box.",
        "{definition} Give the name and the box coordinates of this structure.",
        "Target description: {definition} Where is it? Please output a box.",
        "{definition} Identify this target in the scan and provide its location as a box.",
        "Here is a clue about the target: {definition} Find it and give its box.",
        "{definition} Please find it and answer with a bounding box.",
        "Description: {definition} Locate the described structure in this volume.",
        "{definition} What structure matches this description, and where is it? Please give a box.",
        "The target is described as follows. {definition} Output the target name and its coordinates.",
        "{definition} Based on this, where is the target? Please box it.",
        "Clue: {definition} Identify the structure and its bounding box.",
        "{definition} Localise the structure described here and state its box.",
        "Description: {definition} Find the target and answer with its name and a box.",
        "{definition} Please point out this structure with a bounding box.",
        "Read the description and find the target. {definition} Give its box.",
        "{definition} Where does this structure appear in the image? Output the box.",
    ),
    answers=(
        "The target is the {name}, located at {box}.",
        "This is the {name}; its box is {box}.",
        "It is the {name}, found at {box}.",
        "That describes the {name}. Bounding box: {box}.",
        "The structure is the {name} and it lies within {box}.",
        "Sure, it is the {name} at {box}.",
        "It matches the {name}, whose box is {box}.",
        "The {name}, at {box}.",
        "The description fits the {name}; coordinates: {box}.",
        "This refers to the {name}. It is located at {box}.",
        "I identify it as the {name}, within {box}.",
        "The answer is the {name}, with bounding box {box}.",
        "It is the {name}. You can find it at {box}.",
        "The {name} fits this description, and its box is {box}.",
        "Target: {name}. Box: {box}.",
        "That is the {name}, positioned at {box}.",
        "The described structure is the {name}, enclosed by {box}.",
        "It should be the {name}, located within {box}.",
        "This is the {name}, and its coordinates are {box}.",
        "The {name} is the target; it occupies {box}.",
        "Found the {name} at {box}.",
    ),
    negatives=(
        "This describes the {name}, but it is not in this image.",
        "That would be the {name}, which does not appear in this scan.",
        "The description matches the {name}, but I cannot find it here.",
        "It refers to the {name}; however, it is absent from this volume.",
        "This is the {name}, but it is not visible in this image.",
        "The target would be the {name}, yet this scan does not show it.",
        "That is the {name}, but there is none in this image.",
        "It sounds like the {name}, which is not present here.",
        "The {name} fits the description, but it is outside this scan.",
        "This points to the {name}, although it cannot be seen in this volume.",
        "I recognise the {name} from the description, but it is missing from this image.",
        "The structure is the {name}, which this scan does not include.",
        "It is the {name}, but not in this image, so there is no box.",
    ),
)

REG_CLASS = TemplateFamily(
    questions=(
        "What is inside the box {box}?",
        "Which structure lies within {box}?",
        "Name the target enclosed by {box}.",
        "What can be found at {box} in this image?",
        "Identify the object in the region {box}.",
        "Tell me what occupies {box}.",
        "What is located at the coordinates {box}?",
        "Which organ or structure is in {box}?",
        "Please name what the box {box} contains.",
        "What does the region {box} show?",
        "In this scan, what lies inside {box}?",
        "Can you identify the target at {box}?",
        "What is the structure bounded by {box}?",
        "Look at {box}. What is there?",
        "Which target does the box {box} mark?",
        "What is highlighted by the box {box}?",
        "Recognise the structure within {box}.",
        "What anatomical structure sits at {box}?",
        "Identify what is enclosed in the coordinates {box}.",
        "What is in the area {box} of this volume?",
        "Please tell me which target is inside {box}.",
        "Given the box {box}, what does it contain?",
        "What would you call the object at {box}?",
        "Classify the region {box}.",
        "What is the name of the target in {box}?",
        "Examine {box} and name the structure you see.",
        "Which structure can be seen inside the box {box}?",
        "What object does {box} surround?",
        "State what is present within {box}.",
        "At {box}, what structure do you find?",
        "What is depicted inside {box} in this image?",
        "Determine the target located in {box}.",
        "Name the object within the bounding box {box}.",
        "What occupies the coordinates {box} in this scan?",
        "Which target is boxed by {box}?",
        "Could you say what lies at {box}?",
    ),
    answers=(
        "It is the {name}.",
        "The target is the {name}.",
        "That is the {name}.",
        "The box contains the {name}.",
        "This region shows the {name}.",
        "It is the {name} inside that box.",
        "I see the {name} there.",
        "The structure is the {name}.",
        "The {name}.",
        "That region holds the {name}.",
        "It corresponds to the {name}.",
        "Sure, it is the {name}.",
        "The object in the box is the {name}.",
        "This is the {name}.",
        "The box marks the {name}.",
        "What you see there is the {name}.",
        "It shows the {name}.",
        "The region is occupied by the {name}.",
        "That would be the {name}.",
        "The answer is the {name}.",
    ),
    negatives=(
        "The {name} is not in this image, so I cannot point to it.",
        "Sorry, I cannot find the {name} here.",
        "There is no {name} in this scan.",
        "The {name} does not appear in this volume.",
        "This image does not show the {name}.",
        "No {name} is present here.",
        "I see no {name} in this scan.",
        "The {name} is missing from this image.",
        "The {name} cannot be found in this volume.",
    ),
)

REG_DESCRIPTION = TemplateFamily(
    questions=(
        "Describe the target inside {box} and what it does.",
        "What is the structure at {box}, and what is its role?",
        "Please name and explain the structure within {box}.",
        "Tell me what lies in {box} and describe it.",
        "Identify the object at {box} and give a short description.",
        "What is inside {box}? Please explain what it is.",
        "Explain the structure enclosed by {box}.",
        "Name the target in {box} and describe its function.",
        "Give the name and a description of what {box} contains.",
        "What does the region {box} show? Please describe it.",
        "Describe what you find at the coordinates {box}.",
        "Which structure is in {box}, and what is it for?",
        "Please identify and characterise the target within {box}.",
        "Look at {box}: what is it, and what does it do?",
        "Provide the name and a definition of the structure at {box}.",
        "What is the target bounded by {box}? Describe it briefly.",
        "Interpret the region {box}: name the structure and describe it.",
    ),
    answers=(
        "It is the {name}. {definition}",
        "The target is the {name}. {definition}",
        "This is the {name}. {definition}",
        "Sure, that is the {name}. {definition}",
        "The box contains the {name}. {definition}",
        "It shows the {name}. {definition}",
        "That is the {name}. {definition}",
        "The structure is the {name}. {definition}",
        "I see the {name} there. {definition}",
        "The {name}. {definition}",
        "It corresponds to the {name}. {definition}",
        "The region holds the {name}. {definition}",
        "This region is the {name}. {definition}",
        "The target here is the {name}. {definition}",
        "The answer is the {name}. {definition}",
        "It is the {name}. In short: {definition}",
        "Name: {name}. Description: {definition}",
        "What you see is the {name}. {definition}",
    ),
    negatives=(
        "That describes the {name}, which is not present in this image.",
        "This would be the {name}, but this scan does not show it.",
        "The {name} matches, but it is absent here.",
        "It refers to the {name}; I cannot find it in this volume.",
        "That is the {name}, though it does not appear in this image.",
        "The description fits the {name}, which is missing from this scan.",
    ),
)

SEG_CLASS = TemplateFamily(
    questions=(
        "Can you segment the {name} in this image?",
        "Please segment the {name}.",
        "Segment the {name} in this scan.",
        "Produce a mask of the {name}.",
        "Outline the {name} in this volume.",
        "Could you delineate the {name}?",
        "Give me the segmentation of the {name}.",
        "Where exactly is the {name}? Please answer with a mask.",
        "Generate a mask for the {name} in this image.",
        "Please mark every voxel of the {name}.",
        "Show the {name} as a segmentation mask.",
        "Can you highlight the {name} in this scan?",
        "What is the segmentation of the {name} here?",
        "Please extract the {name} from this volume.",
        "Separate the {name} from the rest of the image.",
        "Delineate the boundary of the {name}.",
        "Create a segmentation of the {name}, please.",
        "Which voxels belong to the {name}? Answer with a mask.",
        "Paint the {name} in this image.",
        "I need a mask of the {name} in this scan.",
        "Please contour the {name}.",
        "Label the {name} region in this volume.",
        "Find the {name} and segment it.",
        "Return a mask covering the {name}.",
        "Could you outline the {name} with a mask?",
        "Segment the {name} and show the result.",
    ),
    answers=(
        "The {name} mask is {seg}.",
        "It is {seg}.",
        "Sure, {seg}.",
        "Here is the mask: {seg}.",
        "The segmentation is {seg}.",
        "Sure, the {name} is segmented as {seg}.",
        "Done: {seg}.",
        "Here it is: {seg}.",
        "The {name} is shown in {seg}.",
        "Mask: {seg}.",
        "Of course, {seg}.",
        "The segmentation of the {name} is {seg}.",
        "This is the {name}: {seg}.",
    ),
    negatives=(
        "Sorry, there is no {name} in this image.",
        "The {name} is not present in this scan, so there is nothing to segment.",
        "I cannot find the {name} here.",
        "This volume does not contain the {name}.",
        "No {name} is visible in this image.",
        "The {name} does not appear in this scan.",
        "There is nothing to segment: the {name} is absent.",
        "Sorry, the {name} is not in this volume.",
        "I see no {name} in this image.",
        "The {name} is missing from this scan.",
        "This image shows no {name}.",
        "The {name} cannot be found here, so no mask is given.",
    ),
)

SEG_DESCRIPTION = TemplateFamily(
    questions=(
        "{definition} Please find this structure and segment it.",
        "Description: {definition} Segment the target.",
        "{definition} What is it? Please answer and give a mask.",
        "Based on the description: {definition} Produce a segmentation of the target.",
        "{definition} Can you identify and segment this structure?",
        "Here is a description: {definition} Please outline the structure it refers to.",
        "{definition} Name the structure and segment it.",
        "Definition: {definition} Generate a mask for it.",
        "{definition} Please delineate the structure described.",
        "Clue: {definition} Find the target and mask it.",
        "{definition} Which structure is this? Show it as a mask.",
        "Target description: {definition} Segment it in this image.",
        "{definition} Identify this target and produce its mask.",
        "Read this description and segment the target. {definition}",
        "{definition} Please answer with the name and a segmentation.",
        "Consider the following: {definition} Outline this structure in the scan.",
        "{definition} Highlight the structure described above.",
        "Description: {definition} What is it, and which voxels belong to it?",
        "{definition} Please find and segment it in this volume.",
        "The target is described as follows. {definition} Provide its mask.",
        "{definition} Locate the described structure and give its segmentation.",
    ),
    answers=(
        "The target is the {name}, segmented as {seg}.",
        "It is the {name}: {seg}.",
        "This is the {name}, and its mask is {seg}.",
        "That describes the {name}. Here is the segmentation: {seg}.",
        "Sure, it is the {name}; mask: {seg}.",
        "The {name} fits the description: {seg}.",
        "It refers to the {name}, shown in {seg}.",
        "The structure is the {name}, with segmentation {seg}.",
        "I identify it as the {name}: {seg}.",
        "The answer is the {name}, see {seg}.",
        "That is the {name}, whose mask is {seg}.",
        "Target: {name}. Mask: {seg}.",
    ),
    negatives=(
        "This describes the {name}, but it is not in this image.",
        "That is the {name}, which this scan does not show.",
        "It refers to the {name}, but there is none here to segment.",
        "The description fits the {name}, yet it is absent from this volume.",
        "This would be the {name}, but I cannot find it in this image.",
        "It is the {name}; however, it does not appear in this scan.",
        "That sounds like the {name}, which is missing here.",
        "The {name} matches, but there is nothing to segment in this volume.",
        "I recognise the {name}, but it is not visible in this image.",
        "This is the {name}, though not present in this scan.",
    ),
)

TEMPLATE_FAMILIES: dict[str, TemplateFamily] = {
    "rec_class": REC_CLASS,
    "rec_description": REC_DESCRIPTION,
    "reg_class": REG_CLASS,
    "reg_description": REG_DESCRIPTION,
    "seg_class": SEG_CLASS,
    "seg_description": SEG_DESCRIPTION,
}


def _non_empty(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value.strip()


def _box_text(box: Sequence[float]) -> str:
    """Written box; only normalised boxes are accepted, so voxel indices cannot leak into the text by mistake."""
    values = [float(b) for b in box]
    if len(values) != 6 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"box must be 6 normalised numbers in [0, 1] (use boxes.normalize_box), got {list(box)}")
    return format_box(values)


def _values(class_name: str, definition: str | None, box: Sequence[float] | None = None) -> dict[str, str]:
    """Everything a template may ask for; ``str.format`` ignores the entries a template does not use."""
    values = {"name": _non_empty(class_name, "class_name"), "seg": SEG_TOKEN}
    if definition is not None:
        values["definition"] = _non_empty(definition, "definition")
    if box is not None:
        values["box"] = _box_text(box)
    return values


def _pair(
    rng: random.Random, questions: Sequence[str], answers: Sequence[str], values: Mapping[str, str],
    answer_variants: int | None = None,
) -> tuple[str, str]:
    """Draw a question then an answer (always in this order, so a seeded ``rng`` gives the same pair); with
    ``answer_variants`` only the first that many answer templates are used."""
    if answer_variants is not None and answer_variants < 1:
        raise ValueError(f"answer_variants must be at least 1 (or None for all), got {answer_variants}")
    return rng.choice(questions).format(**values), rng.choice(answers[:answer_variants]).format(**values)


def _family(class_family: TemplateFamily, description_family: TemplateFamily, definition: str | None) -> TemplateFamily:
    return class_family if definition is None else description_family


def caption_example(report: str, rng: random.Random) -> tuple[str, str]:
    """A report-generation request and the report as its target."""
    return rng.choice(CAPTION_QUESTIONS), _non_empty(report, "report")


def closed_vqa_example(question: str, choices: Mapping[str, str], answer_letter: str) -> tuple[str, str]:
    """Multiple-choice question as published: ``"<q> Choices: A. … B. … C. … D. …"`` → ``"<letter>. <text>"``.

    The target starts with ``"<letter>."`` because closed-VQA accuracy looks for that string in the output.

    Args:
        question: the question text.
        choices: the option text for each of ``A``–``D`` (``"NA"`` where the source left one empty).
        answer_letter: the correct option, ``A``–``D``.

    Raises:
        ValueError: when a choice is missing or ``answer_letter`` is not one of A–D.
    """
    missing = [letter for letter in CHOICE_LETTERS if letter not in choices]
    if missing:
        raise ValueError(f"choices lack option(s) {missing}; got keys {sorted(choices)}")
    if answer_letter not in CHOICE_LETTERS:
        raise ValueError(f"answer_letter must be one of {CHOICE_LETTERS}, got {answer_letter!r}")
    options = " ".join(f"{letter}. {choices[letter]}" for letter in CHOICE_LETTERS)
    return f"{_non_empty(question, 'question')} Choices: {options}", f"{answer_letter}. {choices[answer_letter]}"


def open_vqa_example(question: str, answer: str) -> tuple[str, str]:
    """Free-text question and answer, used as they are (the same VQA row also serves the closed setting)."""
    return _non_empty(question, "question"), _non_empty(answer, "answer")


def rec_example(
    class_name: str, box: Sequence[float] | None, rng: random.Random, definition: str | None = None,
    answer_variants: int | None = None,
) -> tuple[str, str]:
    """Referring-expression comprehension: ask where a target is, answer with its box.

    Args:
        class_name: the target, e.g. ``"liver"``; named in the question unless ``definition`` is given.
        box: normalised ``[d0, h0, w0, d1, h1, w1]``, or None when the target is absent (refusal answer).
        rng: the source of the template choice.
        definition: a description of the target; when given, the question quotes it and the answer names the class.
        answer_variants: use only the first that many answer (and refusal) templates. Many differently worded
            answers split the probability of "present" over many first tokens, so greedy decoding of a small model
            can pick a refusal it finds less likely overall; one wording per outcome makes the first token decide.
    """
    family = _family(REC_CLASS, REC_DESCRIPTION, definition)
    answers = family.negatives if box is None else family.answers
    return _pair(rng, family.questions, answers, _values(class_name, definition, box), answer_variants)


def reg_example(
    class_name: str, box: Sequence[float] | None, rng: random.Random, definition: str | None = None,
    answer_variants: int | None = None,
) -> tuple[str, str]:
    """Referring-expression generation: give a box, answer with the class (plus ``definition`` when given).

    An absent target has no box to ask about, so, as published, the question then comes from the REC list (asking
    for the class or the definition) and the answer from this task's refusals.
    """
    family = _family(REG_CLASS, REG_DESCRIPTION, definition)
    values = _values(class_name, definition, box)
    if box is None:
        questions = _family(REC_CLASS, REC_DESCRIPTION, definition).questions
        return _pair(rng, questions, family.negatives, values, answer_variants)
    return _pair(rng, family.questions, family.answers, values, answer_variants)


def seg_example(
    class_name: str, present: bool, rng: random.Random, definition: str | None = None,
    answer_variants: int | None = None,
) -> tuple[str, str]:
    """Semantic (class name) or referring (``definition``) segmentation; the answer has ``[SEG]`` only if present.
    ``answer_variants``: as for :func:`rec_example`."""
    family = _family(SEG_CLASS, SEG_DESCRIPTION, definition)
    answers = family.answers if present else family.negatives
    return _pair(rng, family.questions, answers, _values(class_name, definition), answer_variants)


def refseg_example(question: str, answer: str) -> tuple[str, str]:
    """An M3D-RefSeg pair, checked to hold exactly one ``[SEG]`` so that one mask is predicted per answer.

    Raises:
        ValueError: when the answer has no ``[SEG]`` or more than one.
    """
    count = answer.count(SEG_TOKEN)
    if count != 1:
        raise ValueError(f"a RefSeg answer needs exactly one {SEG_TOKEN}, found {count} in {answer!r}")
    return _non_empty(question, "question"), answer.strip()


def with_image_tokens(question: str, n_image_tokens: int, caption: bool) -> str:
    """The LLM prompt: ``n_image_tokens`` × ``<im_patch>``, a space (none for captions, as published), the question.

    The image features later replace the ``<im_patch>`` embeddings, so the count must equal the projector's output
    length (256 at the paper configuration).
    """
    if n_image_tokens < 0:
        raise ValueError(f"n_image_tokens must be >= 0, got {n_image_tokens}")
    return IMAGE_TOKEN * n_image_tokens + ("" if caption else " ") + question
