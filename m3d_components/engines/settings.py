"""Check a bundle's user settings against its JSON Schema before anything heavy is built.

Each bundle collects its user-facing parameters (paths, model names, sizes, batch size, epochs, precision) in a
``settings`` object at the top of its config; the first ``initialize`` step validates it with ``jsonschema``, so a
typo in a path or a negative batch size fails in a second with the key named, not after loading an LLM.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Iterable, Sequence, Sized
from pathlib import Path

import jsonschema

__all__ = ["SettingsError", "check_command_line", "check_overrides", "check_settings", "check_stage", "recipe",
           "require_batches", "require_files"]


class SettingsError(ValueError):
    """A user setting that the bundle's schema rejects."""


# `monai.bundle run --key value` parses values with fire: `32,64,64` arrives as a tuple (a JSON array here), while
# `true`, `false` and `null` arrive as strings — Python's `True`, `False` and `None` are the literals it reads.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "array", lambda _, instance: isinstance(instance, (list, tuple))
    ),
)
_LITERALS = {"true": "True", "false": "False", "null": "None", "none": "None"}


def _where(error: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(top level)"


def _literal_hint(value: object) -> str:
    if isinstance(value, str) and value.lower() in _LITERALS:
        return f" (on the command line write {_LITERALS[value.lower()]}: {value!r} is read as a string)"
    return ""


def _null_as_text(settings: dict, schema: dict) -> list[str]:
    """Settings that may be null (a path left out, say) but hold the text "null" or "none", which a path accepts."""
    problems = []
    for key, rule in schema.get("properties", {}).items():
        types = rule.get("type", [])
        value = settings.get(key)
        if "null" in (types if isinstance(types, list) else [types]) and isinstance(value, str) \
                and value.lower() in ("null", "none"):
            problems.append(f"  {key}: {value!r} is text, not null{_literal_hint(value)}")
    return problems


def check_overrides(
    config_files: str | os.PathLike | Sequence[str | os.PathLike], overrides: Iterable[str], label: str | None = None
) -> None:
    """Refuse override ids (``lerning_rate``, ``train#dataloader#num_workers``) that no key of ``config_files`` has.

    MONAI adds an unknown override as a new key, so a misspelled setting would otherwise be ignored and the run go
    on with the default. Ids with a leading ``+`` (MONAI's "merge into") are looked up without it.

    Raises:
        SettingsError: naming each unknown id, with the closest top-level key.
    """
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_files(config_files)
    parser = ConfigParser(config)
    unknown = [i for i in overrides if i.lstrip("+") not in parser]
    if not unknown:
        return
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(key.split("#")[0].lstrip("+"), list(config), n=1)
        lines.append(f"  {key}: not a key of these configs" + (f" (did you mean {close[0]}?)" if close else ""))
    raise SettingsError(f"unknown settings for {label or config_files}:\n" + "\n".join(lines))


# The arguments of `monai.bundle run` itself; every other --key is a config override.
_RUN_ARGUMENTS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
                  "workflow_type", "workflow_name", "properties_path"}


def _is_bundle_run(argv: Sequence[str]) -> bool:
    program = argv[0].replace(os.sep, "/") if argv else ""
    return len(argv) > 1 and argv[1] == "run" and (program == "monai.bundle" or program.endswith("monai/bundle/__main__.py"))


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Refuse ``python -m monai.bundle run … --key value`` overrides that name no key of the run's configs.

    Does nothing outside such a run (``m3d`` commands check their overrides in
    :func:`~m3d_components.engines.paths.run_bundle`). Options are read as python-fire reads them: ``--key value``,
    ``--key=value``, ``--key`` alone, and ``-`` in a name standing for ``_``.

    Raises:
        SettingsError: naming each unknown key, with the closest known one.
    """
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigParser

    argv = list(sys.argv if argv is None else argv)
    if not _is_bundle_run(argv):
        return
    options, args = {}, argv[2:]
    for position, arg in enumerate(args):
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            if not value and position + 1 < len(args) and not args[position + 1].startswith("--"):
                value = args[position + 1]
            options[name.replace("-", "_") if "#" not in name else name] = value
    if "config_file" not in options:
        return
    if options.get("args_file"):  # overrides may also come from a JSON/YAML file of arguments
        options.update({k: "" for k in ConfigParser.load_config_file(options["args_file"])})
    check_overrides(DefaultParseValue(options["config_file"]), [key for key in options if key not in _RUN_ARGUMENTS])


def check_settings(settings: dict, schema_path: str | os.PathLike) -> dict:
    """Validate ``settings`` and return it unchanged; first, under ``python -m monai.bundle run``, refuse command-line
    overrides that name no config key (:func:`check_command_line`).

    Raises:
        SettingsError: listing every rejected key with the reason, e.g. ``batch_size: -1 is less than the minimum
            of 1``, and how to write ``True``/``False``/``None`` where one was typed as ``true``/``false``/``null``.
    """
    check_command_line()
    schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    errors = sorted(_Validator(schema).iter_errors(settings), key=lambda e: list(e.absolute_path))
    lines = [f"  {_where(e)}: {e.message}{_literal_hint(e.instance)}" for e in errors]
    lines += _null_as_text(settings, schema)
    if lines:
        raise SettingsError(f"invalid settings (checked against {Path(schema_path).name}):\n" + "\n".join(lines))
    return settings


def recipe(recipes: dict, stage: int | str) -> dict:
    """The training recipe of ``stage`` (``recipes`` keyed by the stage as text), or a clear error naming the
    stages there are — the recipe is looked up while the settings are collected, before the schema sees ``stage``."""
    if str(stage) not in recipes:
        raise SettingsError(f"invalid settings:\n  stage: {stage!r} is not one of the stages with a recipe "
                            f"({', '.join(sorted(recipes))})")
    return recipes[str(stage)]


def require_batches(loader: Sized) -> None:
    """Stop a training run whose loader yields no batch.

    With ``drop_last`` a loader smaller than one batch is empty, and an Ignite run over it only warns and ends
    "successfully" without a step, a checkpoint or a tracked run — an older checkpoint in the folder would then pass
    for this run's.

    Raises:
        SettingsError: naming the samples per process, ``batch_size`` and what to change.
    """
    if len(loader) > 0:
        return
    sampler = getattr(loader, "sampler", None)
    samples = len(sampler) if sampler is not None else len(loader.dataset)
    per_process = " per process" if hasattr(sampler, "num_replicas") else ""
    raise SettingsError(
        f"the training data gives no batch: {samples} samples{per_process} and batch_size "
        f"{getattr(loader, 'batch_size', '?')}, and a smaller last batch is dropped — lower batch_size, or raise "
        "samples_per_epoch or add training data"
    )


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


def require_files(**paths: str | os.PathLike | None) -> None:
    """Name each given input (``weights=…``, ``image=…``) that does not exist, before the models it feeds are built;
    None means "not asked for" and passes.

    Raises:
        FileNotFoundError: ``weights: /x/trained.safetensors does not exist``, one line per missing input.
    """
    missing = [f"  {name}: {path} does not exist" for name, path in paths.items()
               if path is not None and not Path(path).exists()]
    if missing:
        raise FileNotFoundError("missing inputs:\n" + "\n".join(missing))
