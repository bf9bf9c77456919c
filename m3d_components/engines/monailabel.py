"""A self-contained copy of a bundle for apps that read a single config file, such as MONAI Label.

The bundles layer ``inference.json`` over ``train.json`` (and ``demo.json``) so that nothing is written twice. MONAI
Label's bundle app reads only ``configs/inference.json``, with ``bundle_root`` set to the folder it is given, builds
``network_def`` and loads ``models/model.pt`` into it (``strict=False``); a bundle without ``model.pt`` or
``model.ts`` is skipped. :func:`export_bundle` writes that form: the merged configuration with its folder-relative
paths fixed, the trained tensors as ``models/trained.safetensors`` (which ``network_def`` loads itself) and as
``models/model.pt`` under the network's own parameter names.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from m3d_components.engines.paths import find_bundle
from m3d_components.engines.settings import check_overrides
from m3d_components.models.trainable import canonical_name

__all__ = ["export_bundle"]

logger = logging.getLogger(__name__)

# top-level values computed from the bundle's own folder or made by the demo: fixed to what they are now
_FIXED_WHEN_MENTIONING = ("@bundle_root", "me.demo.")
_COPIED = ("metadata.json", "settings_schema.json", "logging.conf")
_MONAI_LABEL_KEYS = ("network_def", "preprocessing", "inferer", "postprocessing")


def export_bundle(bundle: str, configs: list[str], out: str | os.PathLike, **overrides: Any) -> dict[str, str]:
    """Write ``bundle`` (its ``configs`` merged, then ``overrides``) as a one-file bundle in ``out``.

    Model paths (the LLM, the vision encoder) stay where they are, as absolute paths (relative ones given in
    ``overrides`` are resolved here); the trained weights are copied. The network is built once to name the tensors
    of ``model.pt``, so the export needs the memory of the model on the CPU. The copy also runs as
    ``python -m monai.bundle run --config_file <out>/configs/inference.json``.

    Returns:
        the written ``inference.json``, ``model.pt`` and ``trained.safetensors``.

    Raises:
        SettingsError: for an override id that no config has.
        ValueError: a bundle whose inference config lacks MONAI Label's keys (``network_def``, ``preprocessing``,
            ``inferer``, ``postprocessing``).
        FileNotFoundError: when the trained weights are missing.
    """
    from monai.bundle import ConfigParser

    source = Path(find_bundle(bundle)) / "configs"
    files = [str(source / c) for c in configs]
    check_overrides(files, overrides, f"{bundle} ({', '.join(configs)})")
    parser = ConfigParser()
    parser.read_config(files)
    missing = [key for key in _MONAI_LABEL_KEYS if key not in parser.config]
    if missing:
        raise ValueError(f"{bundle}'s {configs[-1]} defines no {missing}: it is not a bundle MONAI Label can run "
                         "(lamed_seg is)")
    parser.update({key: _absolute(value) for key, value in overrides.items()})
    parser.parse()
    merged = dict(parser.config)
    for key, raw in parser.config.items():
        if isinstance(raw, str) and raw.startswith("$") and any(m in raw for m in _FIXED_WHEN_MENTIONING):
            merged[key] = parser.get_parsed_content(key)
    weights = Path(parser.get_parsed_content("weights"))
    if not weights.is_file():
        raise FileNotFoundError(f"weights: {weights} does not exist (train the bundle first, or pass --weights)")

    out = Path(out).resolve()
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    for name in _COPIED:
        shutil.copyfile(source / name, out / "configs" / name)
    shutil.copyfile(source.parent / "LICENSE", out / "LICENSE")
    written = {"trained": str(out / "models" / "trained.safetensors")}
    shutil.copyfile(weights, written["trained"])
    merged.update(bundle_root=str(out), weights="$@bundle_root + '/models/trained.safetensors'")
    written["config"] = str(out / "configs" / "inference.json")
    Path(written["config"]).write_text(json.dumps(merged, indent=4, default=str))

    written["model"] = str(out / "models" / "model.pt")
    torch.save(_network_state(parser, weights), written["model"])
    logger.info("exported %s to %s", bundle, out)
    return written


def _absolute(value: Any) -> Any:
    """A relative path given on the command line, made absolute: MONAI Label reads the copy from another folder."""
    if isinstance(value, str) and not value.startswith(("$", "@", "%")) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value


def _network_state(parser, weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``weights`` under ``network_def``'s parameter names, as MONAI Label loads ``model.pt``.

    Building the network (the LLM included) is what gives the names under peft's wrappers.
    """
    trained = load_file(str(weights))
    network = parser.get_parsed_content("network_def")
    state = {}
    for name, _ in network.named_parameters():
        key = canonical_name(name.removeprefix("model."))
        if key in trained:
            state[name] = trained[key]
    if len(state) != len(trained):
        raise ValueError(f"{weights}: {len(trained) - len(state)} trained tensors have no parameter in network_def")
    return state
