"""Demo assets made on first use: the synthetic corpus and tiny real models trained on it.

Every bundle's ``demo.json`` points its data and model paths at these functions, so a fresh clone runs end to end
with no downloads: the corpus is generated, a WordPiece tokenizer is trained on its reports and a tiny BERT is
initialised. Each function returns the path and does nothing when the asset already exists.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

from m3d_components.data.cap import load_report, read_cap_split
from m3d_components.data.demo import make_demo_data
from m3d_components.models.tiny import make_tiny_text_encoder, train_wordpiece_tokenizer

__all__ = ["demo_report_texts", "ensure_demo_data", "ensure_demo_text_encoder"]

logger = logging.getLogger(__name__)

_SPLIT_OF = {"n_train": "train", "n_val": "validation", "n_test": "test"}  # manifest "splits" keys


def ensure_demo_data(data_dir: str | os.PathLike, size=(32, 64, 64), seed: int = 0, **counts) -> str:
    """Generate the demo corpus into ``data_dir`` unless one with the same size, seed and split sizes is there.

    ``counts`` are ``make_demo_data``'s ``n_train``/``n_val``/``n_test`` (its defaults when absent). A corpus made
    with other settings is refused rather than reused, since demo results depend on it.
    """
    data_dir = Path(data_dir).resolve()
    manifest = data_dir / "manifest.json"
    defaults = {k: p.default for k, p in inspect.signature(make_demo_data).parameters.items() if k in _SPLIT_OF}
    wanted = {_SPLIT_OF[k]: v for k, v in {**defaults, **counts}.items()}
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        have = (list(found.get("size", [])), found.get("seed"), found.get("splits"))
        if have == (list(size), seed, wanted):
            return str(data_dir)
        raise ValueError(
            f"{data_dir} holds a demo corpus with size, seed, splits {have}, not {(list(size), seed, wanted)}; "
            "choose another folder or delete it"
        )
    logger.info("writing the demo corpus to %s", data_dir)
    make_demo_data(data_dir, size=tuple(size), seed=seed, **counts)
    return str(data_dir)


def demo_report_texts(data_dir: str | os.PathLike) -> list[str]:
    """The training reports of the demo corpus (the text a demo tokenizer is trained on)."""
    cap_json = Path(data_dir) / "M3D_Cap.json"
    return [load_report(r["text_path"]) for r in read_cap_split(cap_json, "train", data_dir)]


def ensure_demo_text_encoder(data_dir: str | os.PathLike, model_dir: str | os.PathLike, **sizes) -> str:
    """A tiny BERT with a WordPiece tokenizer trained on the demo reports, saved in ``model_dir`` (made once)."""
    model_dir = Path(model_dir).resolve()
    if (model_dir / "config.json").is_file():
        return str(model_dir)
    tokenizer_dir = model_dir.parent / (model_dir.name + "_tokenizer")
    train_wordpiece_tokenizer(demo_report_texts(data_dir), tokenizer_dir)
    make_tiny_text_encoder(tokenizer_dir, model_dir, **sizes)
    logger.info("made the demo text encoder in %s", model_dir)
    return str(model_dir)
