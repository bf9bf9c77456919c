"""Report text: the findings/discussion rule of M3D-Cap and sentence-wise shortening to a text budget."""

from __future__ import annotations

import re

__all__ = ["extract_findings", "shorten_report", "split_sentences"]

_MIN_CHARS = 5
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|(?<=\.)(?=[A-Z])")


def _section(text: str, marker: str) -> str:
    at = text.find(marker)
    if at < 0:
        return ""
    rest = text[at + len(marker):]
    # Sections look like 'name:' at the start of a line; stop at the next one.
    nxt = re.search(r"\n\s*[A-Za-z_]+:", rest)
    return rest if nxt is None else rest[: nxt.start()]


def _clean(text: str) -> str:
    return " ".join(text.replace("\n", " ").split())


def extract_findings(text: str) -> str:
    """Report text as M3D-Cap uses it: the ``study_findings:`` section, else ``discussion:``, else the whole text.

    A section counts only when it has at least 5 non-blank characters. Newlines become spaces. Text without section
    markers (an already prepared M3D-Cap ``.txt``) comes back cleaned but otherwise unchanged.
    """
    for marker in ("study_findings:", "discussion:"):
        section = _clean(_section(text, marker))
        if len(section.replace(" ", "")) >= _MIN_CHARS:
            return section
    return _clean(text)


def split_sentences(text: str) -> list[str]:
    """Split on sentence ends, including the published reports' missing space after a period ('mass.The')."""
    return [s.strip() for s in _SENTENCE_RE.split(text) if s.strip()]


def shorten_report(text: str, max_words: int) -> str:
    """Keep whole leading sentences while they fit ``max_words`` words (the first sentence is always kept, cut).

    Deterministic (unlike the reference's random sentence sampling), so evaluation texts do not change between runs.
    """
    if max_words <= 0:
        raise ValueError(f"max_words must be positive, got {max_words}")
    if len(text.split()) <= max_words:
        return text
    kept: list[str] = []
    used = 0
    for sentence in split_sentences(text):
        n = len(sentence.split())
        if kept and used + n > max_words:
            break
        kept.append(sentence if n <= max_words else " ".join(sentence.split()[:max_words]))
        used += n
    return " ".join(kept)
