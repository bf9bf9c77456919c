"""Closed-VQA scoring: the published lenient rule and a strict choice parser.

The published benchmark counts an answer as correct when the gold ``"<letter>."`` occurs anywhere in the output, so
"A. liver B. spleen" is right for both A and B. The strict parser reads the one option the output commits to and
is the number to trust; the lenient one is kept for parity with published tables.
"""

from __future__ import annotations

import re

__all__ = ["PLACEHOLDER", "lenient_correct", "parse_choice", "strict_correct"]

_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?:[.):]|\s*$)")
_MARKER = re.compile(r"(?<![A-Za-z])\(?([A-D])[.):]")
PLACEHOLDER = "NA"  # what the VQA reader writes for an empty choice (a two- or three-option question)


def lenient_correct(prediction: str, letter: str) -> bool:
    """The published rule: ``"<letter>."`` is a substring of the output."""
    return f"{letter}." in prediction


def _names(text: str, option: str) -> bool:
    """Whether ``text`` names ``option`` as whole words (so "na" is not found in "renal")."""
    return re.search(rf"(?<!\w){re.escape(option.lower())}(?!\w)", text.lower()) is not None


def _listed_options(text: str, choices: dict[str, str] | None) -> set[str]:
    """Letters written as options: "B." / "(B)" followed by that option's text (with ``choices``), so that "type A
    dissection" or "Hepatitis C." in an answer is not read as another option; without choices, every marker."""
    listed = set()
    for match in _MARKER.finditer(text):
        letter, option = match.group(1), (choices or {}).get(match.group(1), "")
        following = text[match.end():].lstrip().lower()
        if not choices or (option and option != PLACEHOLDER and following.startswith(option.lower())):
            listed.add(letter)
    return listed


def parse_choice(prediction: str, choices: dict[str, str] | None = None) -> str | None:
    """The option an answer commits to: its leading letter (``"B."``, ``"B)"``, ``"B"``), else the one option text
    it names as whole words (when ``choices`` is given; an option inside a longer named one, "liver" in "liver cyst",
    does not count); None when it names no option or lists several ("A. liver B. spleen")."""
    text = prediction.strip()
    if len(_listed_options(text, choices)) > 1:
        return None
    match = _LETTER.match(text)
    if match:
        return match.group(1)
    if choices:
        named = {c: option for c, option in choices.items()
                 if option and option != PLACEHOLDER and _names(text, option)}
        named = [c for c, option in named.items()
                 if not any(other != option and _names(other, option) for other in named.values())]
        if len(named) == 1:
            return named[0]
    return None


def strict_correct(prediction: str, letter: str, choices: dict[str, str] | None = None) -> bool:
    """True when :func:`parse_choice` finds exactly the gold ``letter``."""
    return parse_choice(prediction, choices) == letter
