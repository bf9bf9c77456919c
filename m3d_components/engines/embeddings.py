"""Embedding inference: collect what an evaluator's network returns and write it to one safetensors file.

The output ``<name>.safetensors`` holds ``image_embeds`` (N, E) and, for image–text pairs, ``text_embeds``
(N, E); ``<name>.json`` lists the source volume of each row, in the same order.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from m3d_components.data.cap import CapDataset, read_cap_split
from m3d_components.data.dataset import VolumeDataset
from m3d_components.data.transforms import eval_transforms
from m3d_components.engines.checkpoint import save_safetensors

__all__ = ["EmbeddingWriter", "embedding_dataset"]


class EmbeddingWriter:
    """Gather ``pred["image_embeds"]`` / ``pred["text_embeds"]`` per iteration; write them when the run completes.

    Args:
        path: output ``.safetensors`` file (a ``.json`` index of volume paths is written beside it).
        path_key: the batch field with each sample's volume path (kept by the collator).
    """

    def __init__(self, path: str | os.PathLike, path_key: str = "image_path") -> None:
        self.path = Path(path)
        self.path_key = path_key
        self.chunks: dict[str, list[torch.Tensor]] = {}
        self.sources: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self.chunks, self.sources = {}, []

    def collect(self, engine: Engine) -> None:
        pred = engine.state.output["pred"]
        for key in ("image_embeds", "text_embeds"):
            if key in pred:
                self.chunks.setdefault(key, []).append(pred[key].detach().float().cpu())
        self.sources.extend(engine.state.batch.get(self.path_key, []))

    def write(self, engine: Engine) -> None:
        tensors = {k: torch.cat(v) for k, v in self.chunks.items()}
        save_safetensors(tensors, self.path)
        index = {"rows": len(self.sources), "sources": self.sources, "tensors": sorted(tensors)}
        self.path.with_suffix(".json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")


def embedding_dataset(
    cap_json: str | os.PathLike,
    split: str,
    data_root: str | os.PathLike,
    volume_glob: str | None = None,
    max_words: int | None = None,
    image_shape=None,
) -> torch.utils.data.Dataset:
    """Image–report pairs of a Cap split, or — with ``volume_glob`` (e.g. ``"scans/*.npy"``) — volumes alone."""
    if volume_glob:
        paths = sorted(glob.glob(volume_glob))
        if not paths:
            raise FileNotFoundError(f"no volume matches {volume_glob!r}")
        return VolumeDataset(paths, eval_transforms(), image_shape)
    records = read_cap_split(cap_json, split, data_root)
    return CapDataset(records, eval_transforms(), seed=0, image_shape=image_shape, max_words=max_words)
