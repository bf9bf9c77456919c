"""Rewording a referring description several ways with a local LLM (``--enhance``), as done for M3D-RefSeg.

Only the prompt and the parsing live here. A rewording is kept when it is a single sentence of sensible length,
differs from the original and from the other rewordings, and carries no special token, so a bad reply can only
shrink the list of phrasings, never put broken text into the data.
"""

from __future__ import annotations

import re

from m3d_components.data.generation.vqa import normalize
from m3d_components.data.tokens import ALL_NEW_TOKENS

__all__ = ["paraphrase_prompt", "parse_paraphrases"]

SYSTEM_PROMPT = "You rewrite short medical descriptions in other words without changing their meaning."

_SENTENCE_BREAK = re.compile(r"[.!?]\s+\S")  # a second sentence after the first
_ITEM = re.compile(r"^\s*(?:\d+\s*[.):-]|[-*•])\s*(.+?)\s*$")


def paraphrase_prompt(description: str, n: int) -> list[dict[str, str]]:
    """Chat messages (system, user) asking for ``n`` rewordings of ``description``, one numbered line each."""
    if not description.strip():
        raise ValueError("the description to reword is empty")
    if n < 1:
        raise ValueError(f"the number of rewordings must be >= 1, got {n}")
    user = (
        f"Description: {description.strip()}\n\n"
        f"Write {n} different ways to say this description, keeping its meaning and without naming anything new. "
        "One per line, numbered 1., 2., and nothing else."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_paraphrases(reply: str, original: str, n: int, min_words: int = 3, max_words: int = 40) -> list[str]:
    """At most ``n`` usable rewordings from a reply (see the module docstring for what is usable)."""
    seen = {normalize(original)}
    kept = []
    for line in reply.splitlines():
        match = _ITEM.match(line)
        if not match:
            continue
        text = match.group(1).strip(" \"'*")
        key = normalize(text)
        if (
            key in seen
            or not min_words <= len(text.split()) <= max_words
            or any(token in text for token in ALL_NEW_TOKENS)
            or re.search(r"[<>{}]", text)
            or _SENTENCE_BREAK.search(text.rstrip(".!? "))
            or text.endswith(":")
        ):
            continue
        seen.add(key)
        kept.append(text)
        if len(kept) == n:
            break
    return kept
