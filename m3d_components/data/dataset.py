"""The base of every M3D dataset: records in, MONAI-style dict samples out.

A sample is a dict: ``image`` (1, D, H, W) float32 in [0, 1], the raw text fields of its record, and — after the
task's template is applied — ``question``, ``answer`` and ``task``. The transform runs *before* templating, so a
laterality-swapping flip changes "left"/"right" in the fields that the question and answer are built from.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta

from m3d_components.data.volume import load_volume

__all__ = ["RecordDataset", "VolumeDataset"]

Sample = dict[str, Any]


class RecordDataset(torch.utils.data.Dataset):
    """A list of reader records, loaded lazily.

    Args:
        records: dicts from one of the readers (``read_cap_split``, ``read_vqa_csv``, …).
        transform: a MONAI dict transform (see ``m3d_components.data.transforms``) applied to the loaded sample.
        seed: None for training (templates drawn at random); an int makes template choice a function of
            (seed, index), so validation and benchmark prompts are the same in every run and worker.
        image_shape: the expected (1, D, H, W) of every volume; None accepts any.
    """

    task: str = ""

    def __init__(
        self,
        records: Sequence[dict],
        transform: Callable[[Sample], Sample] | None = None,
        seed: int | None = None,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.seed = seed
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    def __len__(self) -> int:
        return len(self.records)

    def rng(self, index: int) -> random.Random:
        """The template random source for sample ``index``: seeded per index, or fresh entropy in training."""
        if self.seed is None:
            return random.Random(random.getrandbits(64))
        return random.Random(self.seed * 1_000_003 + index)

    def load_image(self, record: dict) -> np.ndarray:
        return load_volume(record["image"], self.image_shape)

    def load(self, record: dict) -> Sample:
        """Read the record's files into a sample (image, masks, text fields). Subclasses add their fields."""
        return {"image": self.load_image(record), "image_path": str(record["image"])}

    def _transform(self, sample: Sample) -> Sample:
        """Run the transform on plain tensors: samples carry no affine worth tracking, and MetaTensor bookkeeping
        made the augmentation chain several times slower than the model step on CPU. The global flag is restored."""
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            return self.transform(sample)
        finally:
            set_track_meta(tracking)

    def format(self, sample: Sample, rng: random.Random) -> Sample:
        """Add ``question``/``answer``/``task`` from the (transformed) sample. Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement format()")

    def __getitem__(self, index: int) -> Sample:
        sample = self.load(self.records[index])
        if self.transform is not None:
            sample = self._transform(sample)
        sample = self.format(sample, self.rng(index))
        for key, value in sample.items():
            if isinstance(value, np.ndarray):
                sample[key] = torch.from_numpy(np.ascontiguousarray(value))
        sample["task"] = self.task
        return sample


class VolumeDataset(RecordDataset):
    """Volumes alone (e.g. for embedding inference): ``{"image", "image_path"}`` per ``.npy`` path."""

    task = "volume"

    def __init__(self, paths: Sequence[str], transform=None, image_shape=None) -> None:
        super().__init__([{"image": p} for p in paths], transform, seed=0, image_shape=image_shape)

    def format(self, sample: Sample, rng: random.Random) -> Sample:
        return sample
