"""An LLM as judge of generated reports: the request, and a tolerant reader of the score it answers with.

The protocol (M3D-Bench's optional report-generation judge): the judge lists the findings of the reference report,
counts how many the generated report states fully or partly, and answers with a 0–100 score. Judges phrase scores in
many ways ("Score: 85.", "**Score**: 85/100", "score = 8.5/10", "72%"); :func:`parse_judge_score` reads all of these,
returns None when no score is given (counted, not guessed), and never reads a number out of the findings themselves.
"""

from __future__ import annotations

import re

__all__ = ["JUDGE_SYSTEM", "judge_messages", "parse_judge_score"]

JUDGE_SYSTEM = "You grade radiology reports written by a model against a reference report. Be strict and brief."

_REQUEST = (
    "Reference report:\n{reference}\n\nGenerated report:\n{prediction}\n\n"
    "List the findings the reference report states. For each, decide whether the generated report states it fully, "
    "partly or not at all. Then give the share of the reference findings that are fully or partly stated as a score "
    "from 0 to 100. End with one line of the form \"Score: <number>.\""
)
# "score" (any case, optional markdown) then a number, optionally "/ 100" or "/ 10" or "%"
_SCORED = re.compile(
    r"score\W{0,6}?(?:is|of|=|:)?\s*\**\s*(\d+(?:\.\d+)?)(?![\d.]*\d)\s*(/\s*100|/\s*10\b|%)?", re.IGNORECASE
)
_PERCENT = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*%")


def judge_messages(reference: str, prediction: str) -> list[dict[str, str]]:
    """The chat messages asking the judge to score ``prediction`` against ``reference``."""
    request = _REQUEST.format(reference=reference.strip(), prediction=prediction.strip() or "(empty)")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": request}]


def parse_judge_score(reply: str) -> float | None:
    """The judge's score as a fraction in [0, 1], or None when the reply holds no usable score.

    The last "score …" statement wins (judges often restate it at the end); "x/10" is scaled to 100 and a decimal
    at most 1 ("0.85") read as a fraction; without the word "score" a lone percentage is accepted. Values above 100
    are not scores and give None.
    """
    matches = list(_SCORED.finditer(reply))
    if matches:
        number, scale = matches[-1].group(1), (matches[-1].group(2) or "").replace(" ", "")
        value = float(number) * (10 if scale == "/10" else 1)
        if not scale and "." in number and value <= 1:  # "Score: 0.85" is a fraction, not 0.85 %
            value *= 100
    else:
        percents = _PERCENT.findall(reply)
        if len(percents) != 1:
            return None
        value = float(percents[0])
    return value / 100 if 0 <= value <= 100 else None
