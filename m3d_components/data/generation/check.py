"""The second LLM pass over generated VQA items: is the question consistent with its report and the answer right?

Published M3D-VQA test items carry a verdict column: 1 when the checker said yes, 0 for no, −1 when its reply said
neither. The paper reports 99.4 % passing (13,729 of 13,814) on its test set; :func:`pass_rate_summary` reports ours
the same way, with the unclear replies counted apart instead of being folded into a failure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from m3d_components.data.vqa import CHOICE_LETTERS

__all__ = ["CHECK_COLUMNS", "PAPER_PASS_RATE", "REPLY_PREFIX", "check_prompt", "parse_verdict", "pass_rate_summary"]

CHECK_COLUMNS = ("Check", "Check Reason")
PAPER_PASS_RATE = (13_729, 13_814)

# The checker's reply is primed with this, so even a small model answers the question first (parse the text after it).
REPLY_PREFIX = "Yes or No:"
SYSTEM_PROMPT = "You are a careful radiologist who reviews exam questions written from radiology reports."

_VERDICT = re.compile(r"^\W*(yes|no)\b[\s.,:;!-]*(.*)$", re.I | re.S)
_ANYWHERE = re.compile(r"\b(yes|no)\b", re.I)


def check_prompt(report: str, question: str, choices: Mapping[str, str], letter: str) -> list[dict[str, str]]:
    """Chat messages (system, user) asking whether one item agrees with its report.

    Raises:
        ValueError: an empty report or question, or ``letter`` not among the choices.
    """
    if not report.strip() or not question.strip():
        raise ValueError("the check needs the item's report and question")
    if letter not in CHOICE_LETTERS or letter not in choices:
        raise ValueError(f"answer letter {letter!r} is not one of the choices {sorted(choices)}")
    options = "\n".join(f"{c}. {choices[c]}" for c in CHOICE_LETTERS if c in choices)
    user = (
        f"Radiology report:\n\"\"\"\n{report.strip()}\n\"\"\"\n\n"
        f"Question: {question.strip()}\n{options}\nProposed answer: {letter}. {choices[letter]}\n\n"
        "Does the report support this question and this answer? Reply with Yes or No first, then one short "
        "sentence saying why."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_verdict(reply: str) -> tuple[int, str]:
    """(1 yes / 0 no / −1 neither, reason) from a checker's reply.

    A reply that starts with yes/no decides at once; otherwise a reply holding only one of the two words decides;
    anything else (both words, neither) is unclear.
    """
    text = reply.strip()
    match = _VERDICT.match(text)
    if match:
        return (1 if match.group(1).lower() == "yes" else 0), " ".join(match.group(2).split())
    words = {w.lower() for w in _ANYWHERE.findall(text)}
    if len(words) == 1:
        return (1 if words == {"yes"} else 0), " ".join(text.split())
    return -1, " ".join(text.split())


def pass_rate_summary(verdicts: Sequence[int]) -> dict[str, object]:
    """Counts of yes/no/unclear, the pass rate over all items, and the paper's figure beside it."""
    passed, failed, unclear = (sum(1 for v in verdicts if v == k) for k in (1, 0, -1))
    total = len(verdicts)
    return {
        "items": total,
        "passed": passed,
        "failed": failed,
        "unclear": unclear,
        "pass_rate": round(passed / total, 4) if total else None,
        "paper_pass_rate": round(PAPER_PASS_RATE[0] / PAPER_PASS_RATE[1], 4),
    }
