"""Multiple-choice VQA from a report: prompts for a local LLM, parsing its replies, and the self-filtering rules.

A report yields up to nine questions whose type follows the published M3D-VQA recipe (:data:`TOPIC_PLAN`: 1 plane,
2 phase/window, 3 organ, 4–6 abnormality, 7–9 its position). Each question is asked for in its own prompt, with its
own aspect, so that greedy decoding of the same report still gives nine different questions and a small model only
has to keep one item in mind. The reply is written line by line in the published layout (:data:`GUIDED_LAYOUT`):
the LLM continues ``Question:``, then ``Choice: A.`` after its question line, then ``Answer:`` after its choices —
small local models that drift off the layout on their own then still give parseable items, and large ones lose
nothing. :func:`parse_reply`
reads the ``Question / Choice / Answer`` layout and the usual deviations of small models (markdown bold, "Options:",
choices on separate lines, "The correct answer is C", a letter without text or text without a letter).
:func:`filter_drafts` then keeps only items a reader of the image could answer, counting why each other item went.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from m3d_components.data.vqa import CHOICE_LETTERS

__all__ = [
    "FILTERS",
    "EXAMPLE_REPORT",
    "GUIDED_LAYOUT",
    "REPLY_PREFIX",
    "TOPIC_PLAN",
    "Draft",
    "FilterLimits",
    "Topic",
    "VQAItem",
    "continue_layout",
    "filter_drafts",
    "normalize",
    "parse_reply",
    "question_prompts",
]

@dataclass(frozen=True)
class Topic:
    """One question slot: its M3D-VQA type, the aspect asked about, and a worked example on :data:`EXAMPLE_REPORT`."""

    question_type: int
    aspect: str
    example: tuple[str, str, str]  # question, "A. … B. … C. … D. …", "<letter>. <text>"


# A made-up report of our own for the worked example shown before each request (one earlier chat turn): small
# models follow a shown layout far better than a described one. A verbatim copy of the example question and
# choices is removed by the ``copied_example`` rule.
EXAMPLE_REPORT = (
    "Coronal CT of the chest in the arterial phase. A 2.1 cm nodule is seen in the right upper lobe of the lung. "
    "The heart and aorta are normal."
)
# Question number − 1 → topic, in the published order: 1 plane, 2 phase/window, 3 organ, 4–6 abnormality,
# 7–9 its position.
TOPIC_PLAN = (
    Topic(1, "the imaging plane of the scan (axial, sagittal or coronal)",
          ("In which plane is this scan shown?", "A. Axial B. Coronal C. Sagittal D. Oblique", "B. Coronal")),
    Topic(2, "the CT phase or window of the scan (for example non-contrast, arterial, portal venous, delayed, lung "
             "or bone window)",
          ("In which phase was this scan acquired?", "A. Non-contrast B. Portal venous C. Arterial D. Delayed",
           "C. Arterial")),
    Topic(3, "the organ or body region the scan shows",
          ("Which organ is mainly shown in this scan?", "A. Lung B. Liver C. Kidney D. Bladder", "A. Lung")),
    Topic(4, "what the main abnormality is",
          ("What abnormality is seen in this scan?", "A. Cyst B. Fracture C. Effusion D. Nodule", "D. Nodule")),
    Topic(4, "what the main abnormality looks like (its size, density, shape or margins)",
          ("About how large is the main abnormality?", "A. 0.5 cm B. 2.1 cm C. 5.0 cm D. 9.3 cm", "B. 2.1 cm")),
    Topic(4, "another abnormal or notable finding",
          ("How do the heart and aorta look?", "A. Enlarged B. Calcified C. Normal D. Absent", "C. Normal")),
    Topic(5, "in which organ the main abnormality lies",
          ("In which organ is the nodule?", "A. Liver B. Lung C. Heart D. Spleen", "B. Lung")),
    Topic(5, "on which side or in which part of the organ the main abnormality lies",
          ("In which part of the lung is the nodule?",
           "A. Right upper lobe B. Left lower lobe C. Right lower lobe D. Left upper lobe", "A. Right upper lobe")),
    Topic(5, "where another finding lies",
          ("Which structures are normal?", "A. Kidneys B. Liver and spleen C. Bladder D. Heart and aorta",
           "D. Heart and aorta")),
)
REPLY_PREFIX = "Question:"
# The steps of a guided reply: what is kept of each step's output (see continue_layout), what is appended after it
# to prime the next step (None: the reply is complete), and where generation may stop (the kept part is complete).
GUIDED_LAYOUT = (
    ("line", "\nChoice: A.", ("?\n", "\n\n")),
    ("choices", "\nAnswer:", ("\nAnswer", "\n\n")),
    ("line", None, ("\n",)),
)
# Every reason an item can be removed for, in the order the rules run; summaries list them all, zeros included.
FILTERS = (
    "malformed",
    "copied_example",
    "duplicate_choices",
    "answer_not_in_choices",
    "inconsistent_letter",
    "mentions_source",
    "answer_in_question",
    "length",
    "duplicate",
)

SYSTEM_PROMPT = (
    "You are a radiologist who writes multiple-choice exam questions about 3D medical scans. You use only facts "
    "stated in the radiology report you are given."
)

_HEADER = re.compile(r"(?im)^[\s*#>_-]*question\s*[-#]?\s*\d*\s*\**\s*[:.)]\**")
_CHOICE_KEY = re.compile(r"(?i)\b(?:choices?|options?)\s*\**\s*:\**")
_CHOICE = re.compile(r"(?:(?<=\s)|^|(?<=[(:*]))\(?([A-Da-d])[.)]\s*")
_ANSWER = re.compile(
    r"(?i)\**\b(?:the\s+)?(?:correct\s+)?answer\b\**\s*(?:choice\s*)?(?::|\bis\b:?)\**"
)
_CHOICE_LINE = re.compile(r"^\s*\**\(?[B-Db-d][.)]")
_ANSWER_LETTER = re.compile(r"^\s*\**(?:option\s+)?\(?([A-D])\)?(?:[.):]|\s|$)\**\s*(.*)$", re.S | re.I)
_SOURCE_WORDS = re.compile(r"(?i)\b(report|the text|file name|filename|according to|as stated|mentioned|passage)\b")
_PLACEHOLDER = re.compile(r"<[^<>]{1,40}>")


@dataclass(frozen=True)
class FilterLimits:
    """Length limits of the ``length`` rule (words), as options of ``m3d generate vqa``."""

    min_question_words: int = 3
    max_question_words: int = 40
    max_choice_words: int = 12


@dataclass
class Draft:
    """One question as the LLM wrote it, before any rule ran. Missing parts stay empty/None."""

    number: int
    question: str
    choices: dict[str, str] = field(default_factory=dict)
    letter: str | None = None
    answer: str | None = None


@dataclass(frozen=True)
class VQAItem:
    """A question that passed every rule, in the published row layout (see :meth:`row`)."""

    question_type: int
    question: str
    choices: tuple[str, str, str, str]
    letter: str

    def row(self, image_path: str, report: str) -> dict[str, object]:
        """The M3D-VQA CSV row (published column names)."""
        answer = self.choices[CHOICE_LETTERS.index(self.letter)]
        return {
            "Image Path": image_path,
            "Text": report,
            "Question Type": self.question_type,
            "Question": self.question,
            **{f"Choice {c}": text for c, text in zip(CHOICE_LETTERS, self.choices)},
            "Answer": answer,
            "Answer Choice": self.letter,
        }


def _request(report: str, aspect: str) -> str:
    return (
        f"Radiology report:\n\"\"\"\n{report.strip()}\n\"\"\"\n\n"
        f"Write one multiple-choice question about {aspect}, answerable by looking at this scan: the question, then "
        "'Choice:' with four different short options A. B. C. D., then 'Answer:' with the letter and the text of the "
        "correct option. Never mention the report or a file name, and do not put the answer in the question."
    )


def question_prompts(report: str, n_questions: int = len(TOPIC_PLAN)) -> list[list[dict[str, str]]]:
    """Chat messages for the first ``n_questions`` topics of :data:`TOPIC_PLAN` on ``report``: the system prompt,
    the worked example as an earlier turn, then the request.

    Raises:
        ValueError: an empty report, or a question count outside 1–9.
    """
    if not report.strip():
        raise ValueError("the report is empty")
    if not 1 <= n_questions <= len(TOPIC_PLAN):
        raise ValueError(f"n_questions must be 1–{len(TOPIC_PLAN)}, got {n_questions}")
    prompts = []
    for topic in TOPIC_PLAN[:n_questions]:
        question, choices, answer = topic.example
        prompts.append([
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": _request(EXAMPLE_REPORT, topic.aspect)},
            {"role": "assistant", "content": f"Question: {question}\nChoice: {choices}\nAnswer: {answer}"},
            {"role": "user", "content": _request(report, topic.aspect)},
        ])
    return prompts


def _clean(text: str) -> str:
    return " ".join(text.replace("**", " ").split()).strip(" \"'`*_")


def normalize(text: str) -> str:
    """Comparison form of a text: lower case, punctuation dropped, spaces collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _split_choices(text: str) -> dict[str, str]:
    """``A. x B. y C. z D. w`` (one line or several) → ``{"A": "x", …}``; markers must come in order A, B, C, D."""
    markers, expected = [], 0
    for match in _CHOICE.finditer(text):
        if expected < len(CHOICE_LETTERS) and match.group(1).upper() == CHOICE_LETTERS[expected]:
            markers.append(match)
            expected += 1
    choices = {}
    for i, match in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        piece = text[match.end():end].strip().split("\n")[0]  # a choice never spans lines
        piece = re.sub(rf"(?i)^\(?{match.group(1)}[.)]\s*", "", piece)  # "A. A. text" → "text"
        choices[match.group(1).upper()] = _clean(piece).rstrip(" ,;")
    return choices


def _parse_block(number: int, block: str) -> Draft:
    answer_match = _ANSWER.search(block)
    body, answer_part = (block[: answer_match.start()], block[answer_match.end():]) if answer_match else (block, "")
    key = _CHOICE_KEY.search(body)
    if key:
        question, choice_text = body[: key.start()], body[key.end():]
    else:
        first = next((m for m in _CHOICE.finditer(body) if m.group(1).upper() == "A"), None)
        question, choice_text = (body[: first.start()], body[first.start():]) if first else (body, "")
    draft = Draft(number=number, question=_clean(question), choices=_split_choices(choice_text))
    answer_line = answer_part.replace("**", " ").strip().splitlines()[0] if answer_part.strip(" *\n") else ""
    letter = _ANSWER_LETTER.match(answer_line)
    if letter:
        draft.letter, rest = letter.group(1).upper(), _clean(letter.group(2))
        draft.answer = rest or None
    elif answer_line.strip():
        draft.answer = _clean(answer_line)
    return draft


def continue_layout(reply: str, prefix: str, keep: str, follow: str | None) -> str:
    """Keep what the LLM wrote after ``prefix`` for this step and append the next step ``follow``.

    ``keep`` is ``"line"`` (the first line) or ``"choices"`` (the first line and the ``B.``/``C.``/``D.`` lines
    right after it, for models that put one choice per line).
    """
    lines = reply[len(prefix):].strip().split("\n")
    kept = [lines[0].strip()]
    if keep == "choices":
        for line in lines[1:]:
            if not _CHOICE_LINE.match(line):
                break
            kept.append(line.strip())
    text = "\n".join(k for k in kept if k)
    done = f"{prefix} {text}" if text else prefix
    return done if follow is None else done + follow


def parse_reply(reply: str, number: int) -> Draft:
    """The first question of an LLM reply (primed with :data:`REPLY_PREFIX`), parsed as far as it goes.

    No rule is applied here; a reply with no question header at all gives a draft with an empty question.
    """
    headers = list(_HEADER.finditer(reply))
    if not headers:
        return Draft(number=number, question="")
    end = headers[1].start() if len(headers) > 1 else len(reply)
    return _parse_block(number, reply[headers[0].end():end])


def _check(draft: Draft, seen: set[str], limits: FilterLimits, n_questions: int) -> tuple[str | None, VQAItem | None]:
    """(reason, None) for a removed draft, (None, item) for a kept one. Rules run in :data:`FILTERS` order."""
    choices = [draft.choices.get(c, "") for c in CHOICE_LETTERS]
    texts = [draft.question, *choices, draft.answer or ""]
    if (
        not 1 <= draft.number <= n_questions
        or not draft.question
        or not all(choices)
        or (draft.letter is None and draft.answer is None)
        or any(_PLACEHOLDER.search(t) for t in texts)
    ):
        return "malformed", None
    normed = [normalize(c) for c in choices]
    example_question, example_choices, _ = TOPIC_PLAN[draft.number - 1].example
    if normalize(draft.question) == normalize(example_question) and normed == [
        normalize(c) for c in _split_choices(example_choices).values()
    ]:
        return "copied_example", None
    if len(set(normed)) < len(normed) or any(n in ("na", "none", "") for n in normed):
        return "duplicate_choices", None
    letter = draft.letter
    if draft.answer is not None:
        answer = f" {normalize(draft.answer)} "
        exact = [c for c, n in zip(CHOICE_LETTERS, normed) if f" {n} " == answer]
        # "B. Axial plane" names choice "Axial": a choice written inside the answer (or the reverse) counts too.
        named = exact or [c for c, n in zip(CHOICE_LETTERS, normed) if n and (f" {n} " in answer or answer in f" {n} ")]
        if letter is None:
            if len(named) != 1:
                return "answer_not_in_choices", None
            letter = named[0]
        elif not named:
            return "answer_not_in_choices", None
        elif letter not in named:
            return "inconsistent_letter", None
    if _SOURCE_WORDS.search(draft.question):
        return "mentions_source", None
    question = f" {normalize(draft.question)} "
    right = normed[CHOICE_LETTERS.index(letter)]
    others = [n for c, n in zip(CHOICE_LETTERS, normed) if c != letter]
    if f" {right} " in question and not any(f" {n} " in question for n in others):
        return "answer_in_question", None
    words = len(draft.question.split())
    if not limits.min_question_words <= words <= limits.max_question_words or any(
        len(c.split()) > limits.max_choice_words for c in choices
    ):
        return "length", None
    if question in seen:
        return "duplicate", None
    seen.add(question)
    return None, VQAItem(TOPIC_PLAN[draft.number - 1].question_type, draft.question, tuple(choices), letter)  # type: ignore[arg-type]


def filter_drafts(
    drafts: Sequence[Draft],
    limits: FilterLimits = FilterLimits(),
    n_questions: int = len(TOPIC_PLAN),
    seen: set[str] | None = None,
) -> tuple[list[VQAItem], Counter]:
    """Apply the self-filtering rules to one report's drafts.

    Rules (each removal is counted under its name): ``malformed`` (no question text, fewer than four choices, no
    answer, a number outside the plan, template placeholders like ``<choice>`` copied), ``copied_example`` (the
    worked example's question and choices repeated), ``duplicate_choices`` (two equal choices or an empty/"NA"
    one), ``answer_not_in_choices``, ``inconsistent_letter`` (the letter names another choice than the answer text),
    ``mentions_source`` (refers to the report or a file), ``answer_in_question`` (the right choice, and no other, is
    written in the question, so the text alone answers it), ``length`` (see :class:`FilterLimits`), ``duplicate``
    (the same question twice for one image).

    Args:
        drafts: from :func:`parse_reply`, numbered 1… in :data:`TOPIC_PLAN` order.
        limits: length limits.
        n_questions: how many questions were asked for (a higher number is ``malformed``).
        seen: normalised questions already kept for this image (updated in place).

    Returns:
        The kept items and a counter of removal reasons.
    """
    seen = set() if seen is None else seen
    kept, removed = [], Counter()
    for draft in drafts:
        reason, item = _check(draft, seen, limits, n_questions)
        if reason is None:
            kept.append(item)
        else:
            removed[reason] += 1
    return kept, removed

