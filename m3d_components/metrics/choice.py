"""Closed-VQA scoring: the published lenient rule and a strict choice parser.

The published benchmark counts an answer as correct when the gold ``"<letter>."`` occurs anywhere in the output, so
"A. liver B. spleen" is right for both A and B. The strict parser reads the one option the output commits to and
is the number to trust; the lenient one is kept for parity with published tables.
"""

from __future__ import annotations

import re

__all__ = ["lenient_correct", "parse_choice", "strict_correct"]

_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?:[.):]|\s*$)")


def lenient_correct(prediction: str, letter: str) -> bool:
    """The published rule: ``"<letter>."`` is a substring of the output."""
    return f"{letter}." in prediction


def parse_choice(prediction: str, choices: dict[str, str] | None = None) -> str | None:
    """The option an answer commits to: its leading letter (``"B."``, ``"B)"``, ``"B"``), else the one option text
    it contains (when ``choices`` is given); None when it names no option or several."""
    text = prediction.strip()
    match = _LETTER.match(text)
    if match:
        return match.group(1)
    if choices:
        named = [c for c, option in choices.items() if option and option.lower() in text.lower()]
        if len(named) == 1:
            return named[0]
    return None


def strict_correct(prediction: str, letter: str, choices: dict[str, str] | None = None) -> bool:
    """True when :func:`parse_choice` finds exactly the gold ``letter``."""
    return parse_choice(prediction, choices) == letter
