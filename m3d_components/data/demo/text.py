"""Text of the demo corpus: findings reports, multiple-choice questions, referring expressions, class definitions.

Everything is written from a case's attributes (see :func:`~m3d_components.data.demo.phantom.render_phantom`), so
each statement is true of the image. Wording varies through several templates per sentence, picked with the case's
text generator; no question template depends on the answer.

Multiple-choice design (type: question: options → blind accuracy). Every option could be right for some image,
except one never-right filler where a question has only three possible answers:

* 1: plane: Axial, Coronal, Sagittal + filler "Oblique" → 1/3
* 2: phase: Non-contrast, Arterial, Portal venous, Delayed → 1/4
* 3: organ seen: one organ of each region (weighted, see below) + filler "Brain" / "Thyroid gland" → 1/3
* 3: lesion organ: the lesion organ + 3 of the 5 other lesion organs → 1/4
* 4: abnormality: No focal lesion, Hypodense lesion, Hyperdense lesion + filler "Bone fracture" → 1/3
* 5: lesion position: {Left, Right} side × {upper, lower} part → 1/4

"Organ seen" draws its answer and its distractors from the same per-region weights (heart, gallbladder and bladder
5/9, each lesion organ 2/9), so the options tell nothing about the answer, yet, with the lesion-organ questions, all
nine organs answer type 3 equally often.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from m3d_components.data.demo.design import BalancedCycle
from m3d_components.data.demo.phantom import LESION_ORGANS, REGION_ORGANS, REGIONS
from m3d_components.data.tokens import SEG_TOKEN

__all__ = [
    "LETTERS",
    "TERM_DICTIONARY",
    "Question",
    "RefRegion",
    "report_text",
    "vqa_questions",
    "refseg_regions",
    "refseg_questions",
    "seen_organ_pool",
]

LETTERS = "ABCD"

_PHASE_PHRASE = {"non-contrast": "without intravenous contrast", "arterial": "in the arterial phase",
                 "portal venous": "in the portal venous phase", "delayed": "in the delayed phase"}
_TECHNIQUE = ("{Plane} CT of the {region} {phase}.", "{Plane} images of the {region} were acquired {phase}.",
              "CT of the {region} {phase}, reconstructed in the {plane} plane.")
_COVERAGE = ("The field of view includes the {organs}.", "Imaged structures include the {organs}.",
             "The scan covers the {organs}.")
_NO_LESION = ("No focal lesion is identified.", "No focal abnormality is seen.",
              "The imaged organs show no focal lesion.")
_LESION = ("A {size} cm {density} {noun} is seen in the {part} portion of the {organ}{side}.",
           "There is a {density} {noun} measuring {size} cm in the {part} part of the {organ}{side}.",
           "The {part} portion of the {organ}{side} contains a {density} {noun} of {size} cm.")
_MEASURE = {
    "chest": ("The heart measures {heart} cm in transverse diameter.", "Transverse cardiac diameter is {heart} cm."),
    "upper abdomen": ("The liver spans {liver} cm craniocaudally and the spleen measures {spleen} cm.",
                      "Liver span is {liver} cm; the spleen is {spleen} cm long."),
    "lower abdomen": ("The right kidney measures {right_kidney} cm and the left kidney {left_kidney} cm in length.",
                      "Renal lengths are {right_kidney} cm on the right and {left_kidney} cm on the left."),
}
_AORTA = ("The aorta measures {aorta} cm in diameter.", "Aortic calibre is {aorta} cm.")
_FAT = ("Subcutaneous fat is {fat} cm thick.", "The subcutaneous fat layer measures {fat} cm.")
_ENHANCEMENT = {
    "non-contrast": ("No contrast is seen in the vessels.", "Vessels are unopacified."),
    "arterial": ("The aorta is densely opacified.", "There is bright arterial enhancement."),
    "portal venous": ("Solid organs enhance homogeneously.", "Vessels and solid organs show venous-phase enhancement."),
    "delayed": ("Vascular enhancement has faded.", "Contrast has washed out of the vessels."),
}

_PHASE_OPTION = {"non-contrast": "Non-contrast", "arterial": "Arterial", "portal venous": "Portal venous",
                 "delayed": "Delayed"}
_QUESTIONS = {
    "plane": ("In which plane is this CT scan displayed?", "Which imaging plane does this volume show?",
              "What is the slice orientation of this scan?"),
    "phase": ("In which contrast phase was this CT acquired?", "Which phase of contrast enhancement does this scan "
              "show?", "What is the enhancement phase of this CT?"),
    "organ seen": ("Which of the following organs is included in this scan?", "Which of these organs can be seen "
                   "in the image?", "Which organ lies within the scanned field of view?"),
    "lesion organ": ("Which organ contains the lesion?", "In which organ is the focal lesion located?",
                     "Which organ is affected by the abnormality?"),
    "abnormality": ("What abnormality, if any, is seen in this scan?", "Which finding best describes this image?",
                    "Which of the following is present in this scan?"),
    "position": ("Where is the lesion located within the affected organ?", "What is the position of the lesion?",
                 "Where is the lesion situated?"),
}
_QUESTION_TYPE = {"plane": 1, "phase": 2, "organ seen": 3, "lesion organ": 3, "abnormality": 4, "position": 5}
_ORGAN_FILLERS = ("Brain", "Thyroid gland")
_STATUS_OPTION = {None: "No focal lesion", "hypodense": "Hypodense lesion", "hyperdense": "Hyperdense lesion"}

# Where and what each structure is: used for reasoning-based referring expressions and the term dictionary.
_CLUES = {
    "liver": "the large organ in the right upper abdomen that produces bile",
    "gallbladder": "the organ in the right upper abdomen that stores bile",
    "spleen": "the organ in the left upper abdomen that filters ageing red blood cells",
    "left kidney": "the bean-shaped organ in the left flank that filters blood into urine",
    "right kidney": "the bean-shaped organ in the right flank that filters blood into urine",
    "left lung": "the air-filled organ on the left side of the chest",
    "right lung": "the air-filled organ on the right side of the chest",
    "heart": "the muscular organ in the chest that pumps blood",
    "bladder": "the hollow organ low in the abdomen that stores urine",
    "aorta": "the largest artery, running in front of the spine",
}
TERM_DICTIONARY = {
    "liver": ["The liver is the largest solid organ, lying in the right upper abdomen.",
              "An organ that produces bile and clears toxins from the blood.",
              "The organ under the right hemidiaphragm that stores glycogen and makes clotting factors."],
    "spleen": ["The spleen sits in the left upper abdomen behind the stomach.",
               "An organ of the immune system that filters ageing red blood cells.",
               "A soft organ under the left ribs that stores platelets and white cells."],
    "left kidney": ["The kidney on the patient's left side, in the back of the abdomen.",
                    "A bean-shaped organ in the left flank that filters blood into urine.",
                    "The left of the paired organs that keep salt and water in balance."],
    "right kidney": ["The kidney on the patient's right side, slightly lower than the left because of the liver.",
                     "A bean-shaped organ in the right flank that filters blood into urine.",
                     "The right of the paired organs that keep salt and water in balance."],
    "left lung": ["The lung in the left half of the chest, made of two lobes.",
                  "An air-filled organ on the left where blood takes up oxygen.",
                  "The left organ of breathing, beside the heart."],
    "right lung": ["The lung in the right half of the chest, made of three lobes.",
                   "An air-filled organ on the right where blood takes up oxygen.",
                   "The right organ of breathing, above the liver."],
    "bladder": ["The urinary bladder is a hollow muscular sac low in the pelvis.",
                "An organ that collects urine from the kidneys until it is voided.",
                "A distensible reservoir behind the pubic bone that stores urine."],
    "aorta": ["The aorta is the main artery leaving the heart.",
              "The largest blood vessel, running down in front of the spine.",
              "An elastic artery that carries oxygenated blood to the whole body."],
    "heart": ["The heart is a muscular pump in the middle of the chest.",
              "An organ with four chambers that drives blood through the body.",
              "The organ between the lungs that beats to circulate blood."],
    "gallbladder": ["The gallbladder is a small pear-shaped sac under the liver.",
                    "An organ that stores and concentrates bile.",
                    "A hollow organ in the right upper abdomen that empties bile into the duodenum after meals."],
    "lesion": ["A focal area of abnormal tissue that differs in density from the surrounding organ.",
               "An abnormal spot in an organ, such as a cyst, tumour or abscess.",
               "A localised region of damage or disease seen as a change in attenuation on CT."],
}


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; ``blind_accuracy`` is what an image-free model can reach on it."""

    question_type: int
    family: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str
    letter: str
    blind_accuracy: float


@dataclass(frozen=True)
class RefRegion:
    """A region of the RefSeg label map: its id, the structure's name and a one-sentence description."""

    mask_id: int
    name: str
    description: str
    clue: str


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _lesion_phrase(lesion: Mapping, rng: np.random.Generator) -> str:
    organ = lesion["organ"]
    side = f" on the {lesion['side']}" if organ in ("liver", "spleen") else ""
    noun = "mass" if organ.endswith("lung") else _pick(rng, ("lesion", "lesion", "mass"))
    return _pick(rng, _LESION).format(size=f"{lesion['size_mm'] / 10:.1f}", density=lesion["density"], noun=noun,
                                      part=lesion["part"], organ=organ, side=side)


def report_text(attrs: Mapping, rng: np.random.Generator) -> str:
    """One findings paragraph: technique, coverage, lesion (or its absence), measurements, enhancement."""
    plane, region, phase = attrs["plane"], attrs["region"], attrs["phase"]
    sentences = [
        _pick(rng, _TECHNIQUE).format(Plane=plane.capitalize(), plane=plane, region=region,
                                      phase=_PHASE_PHRASE[phase]),
        _pick(rng, _COVERAGE).format(organs=_join(attrs["organs"])),
        _lesion_phrase(attrs["lesion"], rng) if attrs["lesion"] else _pick(rng, _NO_LESION),
        _pick(rng, _MEASURE[region]).format(**attrs["measurements_cm"]),
        _pick(rng, _AORTA).format(**attrs["measurements_cm"]),
        _pick(rng, _FAT).format(**attrs["measurements_cm"]),
        _pick(rng, _ENHANCEMENT[phase]),
    ]
    return " ".join(sentences)


def _closed(family: str, answer: str, others: Sequence[str], letter: str, rng: np.random.Generator,
            blind_accuracy: float) -> Question:
    """Put ``answer`` at ``letter`` and the three ``others`` in random order around it."""
    if len(others) != 3 or answer in others:
        raise ValueError(f"need 3 distractors different from {answer!r}, got {list(others)}")
    shuffled = [others[i] for i in rng.permutation(3)]
    at = LETTERS.index(letter)
    choices = tuple(shuffled[:at] + [answer] + shuffled[at:])
    return Question(_QUESTION_TYPE[family], family, _pick(rng, _QUESTIONS[family]), choices,  # type: ignore[arg-type]
                    answer, letter, blind_accuracy)


def seen_organ_pool(region: str) -> list[str]:
    """The region's organs, each repeated by its weight (9 entries): a uniform pick from it is a weighted pick."""
    return [o for o in REGION_ORGANS[region] for _ in range(2 if o in LESION_ORGANS else 5)]


def _choose(rng: np.random.Generator, values: Sequence[str], k: int) -> list[str]:
    return [values[i] for i in sorted(rng.choice(len(values), size=k, replace=False))]


def vqa_questions(attrs: Mapping, rng: np.random.Generator, letters: Mapping[int, BalancedCycle],
                  seen_organ: Mapping[str, BalancedCycle]) -> list[Question]:
    """Four questions for a case without a lesion, six with one (types 1, 2, 3, 4 and, with a lesion, 3 and 5).

    Args:
        attrs: the case's attributes.
        rng: the case's text generator (templates, distractors, option order).
        letters: per question type, the cycle that balances the correct letter.
        seen_organ: per region, a cycle over :func:`seen_organ_pool` that picks the "organ seen" answer.
    """
    plane, phase, region, lesion = attrs["plane"], attrs["phase"], attrs["region"], attrs["lesion"]
    questions = [
        _closed("plane", plane.capitalize(), [p.capitalize() for p in ("axial", "coronal", "sagittal") if p != plane]
                + ["Oblique"], letters[1].next(), rng, 1 / 3),
        _closed("phase", _PHASE_OPTION[phase], [v for k, v in _PHASE_OPTION.items() if k != phase],
                letters[2].next(), rng, 1 / 4),
    ]
    seen = seen_organ[region].next()
    others = [_pick(rng, seen_organ_pool(r)).capitalize() for r in REGIONS if r != region]
    questions.append(_closed("organ seen", seen.capitalize(), others + [_pick(rng, _ORGAN_FILLERS)],
                             letters[3].next(), rng, 1 / 3))
    if lesion:
        rest = [o.capitalize() for o in LESION_ORGANS if o != lesion["organ"]]
        questions.append(_closed("lesion organ", lesion["organ"].capitalize(), _choose(rng, rest, 3),
                                 letters[3].next(), rng, 1 / 4))
    status = lesion["density"] if lesion else None
    questions.append(_closed("abnormality", _STATUS_OPTION[status],
                             [v for k, v in _STATUS_OPTION.items() if k != status] + ["Bone fracture"],
                             letters[4].next(), rng, 1 / 3))
    if lesion:
        positions = [f"{s.capitalize()} side, {p} part" for s in ("left", "right") for p in ("upper", "lower")]
        answer = f"{lesion['side'].capitalize()} side, {lesion['part']} part"
        questions.append(_closed("position", answer, [p for p in positions if p != answer], letters[5].next(), rng,
                                 1 / 4))
    return questions


def refseg_regions(attrs: Mapping) -> list[RefRegion]:
    """Regions of the RefSeg label map: the lesion first (id 1) when there is one, then the visible organs."""
    regions = []
    lesion = attrs["lesion"]
    if lesion:
        organ = lesion["organ"]
        regions.append(RefRegion(
            1, f"lesion in the {organ}",
            f"A {lesion['size_mm'] / 10:.1f} cm {lesion['density']} lesion in the {lesion['part']} portion of the "
            f"{organ}.",
            f"the {lesion['density']} focal abnormality in {_CLUES[organ]}"))
    for organ in attrs["organs"]:
        regions.append(RefRegion(len(regions) + 1, organ, f"The {organ}, {_CLUES[organ]}.", _CLUES[organ]))
    return regions


_DESCRIBE_Q = ("Please segment the {name}.", "Can you segment the {name} in this image?",
               "Where is the {name}? Please output the mask.")
_DESCRIBE_A = ("It is {seg}.", "Sure, the {name} is {seg}.", "The segmentation of the {name} is {seg}.")
_REASON_Q = ("Which structure is {clue}? Please segment it.", "Segment {clue}.",
             "Find {clue} and show its mask.")
_REASON_A = ("It is the {name}: {seg}.", "That is the {name}, segmented as {seg}.",
             "The {name} fits this description; its mask is {seg}.")


def refseg_questions(region: RefRegion, rng: np.random.Generator) -> list[tuple[int, str, str]]:
    """A description-based (type 0) and a reasoning-based (type 1) (type, question, answer) for one region."""
    fill = {"name": region.name, "clue": region.clue, "seg": SEG_TOKEN}
    return [
        (0, _pick(rng, _DESCRIBE_Q).format(**fill), _pick(rng, _DESCRIBE_A).format(**fill)),
        (1, _pick(rng, _REASON_Q).format(**fill), _pick(rng, _REASON_A).format(**fill)),
    ]
