"""Ask LaMed about one scan: answer text, boxes in normalised / voxel / millimetre coordinates, a PNG of each box.

A NIfTI or DICOM input is first brought to the canonical grid by :func:`~m3d_components.data.ingest.prepare_volume`;
its sidecar maps a predicted box back to the scan's own voxels and to patient millimetres. A ``.npy`` input is used
as it is (boxes then in its own voxels; millimetres only when a sidecar lies next to it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from m3d_components.data.boxes import denormalize_box, parse_boxes
from m3d_components.data.ingest import box_to_patient_mm, box_to_source, load_sidecar, prepare_volume, sidecar_path
from m3d_components.data.prompts import with_image_tokens
from m3d_components.data.volume import load_volume

__all__ = ["answer_question", "describe_boxes", "draw_box_png", "load_scan"]

logger = logging.getLogger(__name__)


def load_scan(
    path: str | os.PathLike, image_size: tuple[int, int, int], work_dir: str | os.PathLike, window: str = "abdomen"
) -> tuple[np.ndarray, dict | None]:
    """(1, D, H, W) float32 volume on the model's grid and the sidecar (None for a bare ``.npy``).

    Raises:
        DataError: unreadable input, or a ``.npy`` whose shape is not (1, *image_size) (named with both shapes).
    """
    path = Path(path)
    shape = (1, *image_size)
    if path.suffix == ".npy":
        side = sidecar_path(path)
        return load_volume(path, shape), (load_sidecar(side) if side.is_file() else None)
    out = Path(work_dir) / (path.name.split(".")[0] + "_canonical.npy")
    sidecar = prepare_volume(path, out, window=window, spatial_size=image_size)
    return load_volume(out, shape), sidecar


def draw_box_png(volume: np.ndarray, box_voxel: list[int], out_path: str | os.PathLike, max_slices: int = 4) -> Path:
    """Draw a voxel box ``[d0, h0, w0, d1, h1, w1]`` on up to ``max_slices`` axial (D) slices it spans, side by side."""
    image = np.asarray(volume[0], dtype=np.float32)
    d0, h0, w0, d1, h1, w1 = box_voxel
    slices = sorted({int(round(v)) for v in np.linspace(d0, d1, max_slices)})
    tiles = []
    for d in slices:
        plane = np.clip(image[min(max(d, 0), image.shape[0] - 1)], 0, 1)
        tile = Image.fromarray((plane * 255).astype(np.uint8)).convert("RGB")
        scale = max(1, 256 // max(tile.size))
        tile = tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)
        ImageDraw.Draw(tile).rectangle(
            [w0 * scale, h0 * scale, (w1 + 1) * scale - 1, (h1 + 1) * scale - 1], outline=(255, 40, 40), width=2
        )
        ImageDraw.Draw(tile).text((4, 4), f"slice {d}", fill=(255, 255, 0))
        tiles.append(tile)
    sheet = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path


def describe_boxes(
    text: str, volume: np.ndarray, sidecar: dict | None, out_dir: str | os.PathLike
) -> list[dict[str, Any]]:
    """Every box written in ``text``: normalised, canonical voxels, source voxels and RAS millimetres (when the
    scan's ``sidecar`` is known), and a PNG of it drawn on ``volume``'s slices (``box_<i>.png`` in ``out_dir``)."""
    image_size = volume.shape[1:]
    boxes = []
    for i, box in enumerate(parse_boxes(text)):
        entry: dict[str, Any] = {"normalized": box, "voxel": denormalize_box(box, image_size)}
        if sidecar is not None:
            entry["source_voxel"] = box_to_source(entry["voxel"], sidecar)
            entry["patient_mm_ras"] = box_to_patient_mm(entry["voxel"], sidecar, "RAS")
        entry["png"] = str(draw_box_png(volume, entry["voxel"], Path(out_dir) / f"box_{i}.png"))
        boxes.append(entry)
    return boxes


@torch.no_grad()
def answer_question(
    network: torch.nn.Module,
    tokenizer,
    image: str | os.PathLike,
    question: str,
    out_dir: str | os.PathLike,
    image_size: tuple[int, int, int] | list[int],
    window: str = "abdomen",
    max_new_tokens: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Answer ``question`` about the scan ``image``; write ``answer.json`` (and ``box_<i>.png``) to ``out_dir``.

    Returns:
        ``{"image", "question", "answer", "boxes": [{"normalized", "voxel", "source_voxel", "patient_mm_ras"}]}``
        (the source/mm entries only when the scan's mapping is known).
    """
    if image is None:
        raise ValueError("no scan given: set image (m3d infer --image scan.nii.gz)")
    if not question or not question.strip():
        raise ValueError("the question is empty")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_size = tuple(int(s) for s in image_size)
    volume, sidecar = load_scan(image, image_size, out_dir, window)
    network.eval()
    prompt = with_image_tokens(question.strip(), network.num_image_tokens, caption=False)
    ids = tokenizer(prompt, return_tensors="pt")
    limit = tokenizer.model_max_length
    if ids["input_ids"].shape[1] >= limit:
        raise ValueError(f"the question takes {ids['input_ids'].shape[1]} tokens with the image; the context is {limit}")
    tokens = network.generate(
        torch.from_numpy(volume)[None].to(device), ids["input_ids"].to(device), ids["attention_mask"].to(device),
        max_new_tokens=min(max_new_tokens, limit - ids["input_ids"].shape[1]), eos_token_id=tokenizer.eos_token_id,
    )
    text = tokenizer.decode(tokens[0], skip_special_tokens=True).strip()
    result = {"image": str(image), "question": question, "answer": text,
              "boxes": describe_boxes(text, volume, sidecar, out_dir)}
    (out_dir / "answer.json").write_text(json.dumps(result, indent=2))
    logger.info("answer: %s", text)
    return result
