"""Check a bundle's user settings against its JSON Schema before anything heavy is built.

Each bundle collects its user-facing parameters (paths, model names, sizes, batch size, epochs, precision) in a
``settings`` object at the top of its config; the first ``initialize`` step validates it with ``jsonschema``, so a
typo in a path or a negative batch size fails in a second with the key named, not after loading an LLM.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema

__all__ = ["SettingsError", "check_settings", "check_stage"]


class SettingsError(ValueError):
    """A user setting that the bundle's schema rejects."""


def _where(error: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(top level)"


def check_settings(settings: dict, schema_path: str | os.PathLike) -> dict:
    """Validate ``settings`` and return it unchanged.

    Raises:
        SettingsError: listing every rejected key with the reason, e.g. ``batch_size: -1 is less than the minimum
            of 1``.
    """
    schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(settings), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n".join(f"  {_where(e)}: {e.message}" for e in errors)
        raise SettingsError(f"invalid settings (checked against {Path(schema_path).name}):\n{lines}")
    return settings


def check_stage(stage: int | str, init_weights: str | os.PathLike | None, producer: str | None = None) -> None:
    """A stage that continues earlier training: say plainly which run to do first when its weights are not there.

    Args:
        stage: the stage about to run (a number, or a name such as "seg").
        init_weights: the earlier weights, or None to start without them.
        producer: the run that writes them (default: lamed_instruct stage 1).

    Raises:
        FileNotFoundError: ``init_weights`` is set but missing.
    """
    if init_weights and not Path(init_weights).is_file():
        raise FileNotFoundError(
            f"stage {stage} starts from {init_weights}, which does not exist: run {producer or 'stage 1 (--stage 1)'} "
            "first, or set init_weights to null to start from the CLIP vision encoder alone"
        )
