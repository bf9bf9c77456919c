"""REC, REG, SS and RES instructions for one image–mask pair, from the templates and a term dictionary.

Each positive or negative (class absent) mask gives :data:`TASK_VARIANTS`: REC and REG by class name ("label") and
by definition, SS by class name, RES by definition. Definitions come from a term dictionary; the package ships one
for common organs (``resources/term_dictionary.json``, our own wording) and users extend or override it with the
M3D-Seg release's ``term_dictionary.json`` or their own. A class without a definition gets only its label variants.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from importlib import resources

from m3d_components.data import prompts
from m3d_components.data.seg import read_term_dictionary

__all__ = ["TASK_VARIANTS", "default_term_dictionary", "instructions_for", "merged_term_dictionary"]

TASK_VARIANTS = (
    ("rec", "label"),
    ("rec", "definition"),
    ("reg", "label"),
    ("reg", "definition"),
    ("ss", "label"),
    ("res", "definition"),
)


def default_term_dictionary() -> dict[str, list[str]]:
    """The organ definitions shipped with the package (class name → one-sentence definitions)."""
    text = resources.files("m3d_components").joinpath("resources", "term_dictionary.json").read_text(encoding="utf-8")
    return json.loads(text)


def merged_term_dictionary(paths: Sequence[str | os.PathLike] = (), builtin: bool = True) -> dict[str, list[str]]:
    """The built-in dictionary (optional), then each file in order; a later file replaces a class's definitions."""
    terms = default_term_dictionary() if builtin else {}
    for path in paths:
        terms.update(read_term_dictionary(path))
    return terms


def instructions_for(
    class_name: str,
    box: Sequence[float] | None,
    definitions: Sequence[str],
    rng: random.Random,
) -> list[dict]:
    """The instructions of one mask (definition variants only when ``definitions`` is not empty).

    Args:
        class_name: the mask's class, e.g. ``"liver"``.
        box: its normalised box, or None when the class is absent from the image (a negative).
        definitions: the class's definitions (the dictionary's, possibly with LLM rewordings); may be empty.
        rng: draws the template and the definition of each instruction.

    Returns:
        ``[{"task", "variant", "question", "answer", "box"}, …]``.
    """
    made = []
    for task, variant in TASK_VARIANTS:
        definition = None
        if variant == "definition":
            if not definitions:
                continue
            definition = rng.choice(list(definitions))
        if task == "rec":
            question, answer = prompts.rec_example(class_name, box, rng, definition=definition)
        elif task == "reg":
            question, answer = prompts.reg_example(class_name, box, rng, definition=definition)
        else:
            question, answer = prompts.seg_example(class_name, box is not None, rng, definition=definition)
        made.append({
            "task": task,
            "variant": variant,
            "question": question,
            "answer": answer,
            "box": list(box) if box is not None else None,
        })
    return made
