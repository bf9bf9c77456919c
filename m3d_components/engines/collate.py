"""Collators that tokenize text once per batch, padding to the longest sample rather than to a fixed 512."""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["ImageTextCollator"]


class ImageTextCollator:
    """Stack images and tokenize one text field of each sample: ``image``, ``input_ids``, ``attention_mask``.

    Args:
        tokenizer: a Hugging Face tokenizer (e.g. BERT WordPiece for CLIP).
        max_length: token budget; longer texts are truncated (the dataset already shortens reports sentence-wise).
        text_key: the sample field to tokenize; None collates images only.
        keep: other sample fields to pass through as lists (e.g. ``image_path`` for inference outputs).
    """

    def __init__(
        self, tokenizer=None, max_length: int = 512, text_key: str | None = "text", keep: Sequence[str] = ()
    ) -> None:
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_key = text_key
        self.keep = tuple(keep)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"image": torch.stack([torch.as_tensor(s["image"]) for s in samples])}
        if self.text_key is not None:
            tokens = self.tokenizer(
                [s[self.text_key] for s in samples],
                padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt",
            )
            batch.update(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        batch.update({k: [s[k] for s in samples] for k in self.keep})
        return batch
