"""Ask LaMed about one scan: answer text, boxes in normalised / voxel / millimetre coordinates, a PNG of each box,
and — for a LaMedSeg answer holding ``[SEG]`` — the mask as a NIfTI on the scan's own grid with a PNG overlay.

A NIfTI or DICOM input is first brought to the canonical grid by :func:`~m3d_components.data.ingest.prepare_volume`;
its sidecar maps a predicted box or mask back to the scan's own voxels and to patient millimetres. A ``.npy`` input
is used as it is (boxes and masks then in its own voxels; millimetres only when a sidecar lies next to it).
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

from m3d_components.data.boxes import denormalize_box, mask_to_box, parse_boxes
from m3d_components.data.ingest import (
    box_to_patient_mm,
    box_to_source,
    load_sidecar,
    prepare_volume,
    sidecar_path,
    write_mask_nifti,
)
from m3d_components.data.prompts import with_image_tokens
from m3d_components.data.volume import load_volume
from m3d_components.models.trainable import load_trained_state

__all__ = [
    "TextPromptedSegmenter",
    "answer_question",
    "describe_boxes",
    "describe_mask",
    "draw_box_png",
    "draw_mask_png",
    "load_scan",
]

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


def draw_mask_png(volume: np.ndarray, mask: np.ndarray, out_path: str | os.PathLike, max_slices: int = 4) -> Path:
    """Overlay a canonical mask in red on up to ``max_slices`` axial (D) slices through it, side by side."""
    image = np.clip(np.asarray(volume[0], dtype=np.float32), 0, 1)
    fg = np.asarray(mask).reshape(volume.shape[1:]).astype(bool)
    depths = np.flatnonzero(fg.any(axis=(1, 2)))
    slices = sorted({int(d) for d in np.linspace(depths[0], depths[-1], max_slices).round()}) if depths.size else [
        fg.shape[0] // 2]
    tiles = []
    for d in slices:
        rgb = np.repeat(image[d][..., None], 3, axis=2)
        rgb[fg[d]] = 0.5 * rgb[fg[d]] + 0.5 * np.array([1.0, 0.1, 0.1])
        tile = Image.fromarray((rgb * 255).astype(np.uint8))
        scale = max(1, 256 // max(tile.size))
        tile = tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)
        ImageDraw.Draw(tile).text((4, 4), f"slice {d}", fill=(255, 255, 0))
        tiles.append(tile)
    sheet = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * tiles[0].width, 0))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path


def describe_mask(
    mask: np.ndarray, volume: np.ndarray, sidecar: dict | None, out_dir: str | os.PathLike
) -> dict[str, Any]:
    """Write a canonical (1, D, H, W) mask for the user: ``mask.nii.gz`` on the scan's own grid and affine (or
    ``mask.npy`` on the canonical grid when the scan's mapping is unknown) and ``mask_overlay.png``.

    Returns:
        ``{"path", "png", "voxels", "box_voxel"}`` (canonical box) plus ``"source_box_voxel"`` and
        ``"patient_mm_ras"`` when the mapping is known; boxes are None for an empty mask.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    box = mask_to_box(mask)
    entry: dict[str, Any] = {"voxels": int(np.count_nonzero(mask)), "box_voxel": None if box is None else list(box)}
    if sidecar is not None:
        entry["path"] = str(write_mask_nifti(mask, sidecar, out_dir / "mask.nii.gz"))
        entry["source_box_voxel"] = None if box is None else box_to_source(box, sidecar)
        entry["patient_mm_ras"] = None if box is None else box_to_patient_mm(box, sidecar, "RAS")
    else:
        entry["path"] = str(out_dir / "mask.npy")
        np.save(entry["path"], np.asarray(mask, dtype=np.uint8))
    entry["png"] = str(draw_mask_png(volume, mask, out_dir / "mask_overlay.png"))
    return entry


def describe_boxes(
    text: str, volume: np.ndarray, sidecar: dict | None, out_dir: str | os.PathLike
) -> list[dict[str, Any]]:
    """Every box written in ``text``: normalised, canonical voxels, source voxels and RAS millimetres (when the
    scan's ``sidecar`` is known), and a PNG of it drawn on ``volume``'s slices (``box_<i>.png`` in ``out_dir``).

    The boxes are model output: one whose minimum lies above its maximum on an axis is kept as written with an
    ``"invalid"`` reason and nothing derived from it, so the answer is still reported.
    """
    image_size = volume.shape[1:]
    boxes = []
    for stale in Path(out_dir).glob("box_*.png"):  # an earlier answer's boxes are not this one's
        stale.unlink()
    for i, box in enumerate(parse_boxes(text)):
        entry: dict[str, Any] = {"normalized": box}
        inverted = [axis for axis, lo, hi in zip("DHW", box[:3], box[3:]) if lo > hi]
        if inverted:
            entry["invalid"] = f"minimum above maximum along {', '.join(inverted)}"
            boxes.append(entry)
            continue
        entry["voxel"] = denormalize_box(box, image_size)
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

    When ``network`` segments (a LaMedSeg) and its answer holds ``[SEG]``, the mask is written too (see
    :func:`describe_mask`); the same mapping takes boxes and masks back to the scan, so they agree.

    Returns:
        ``{"image", "question", "answer", "boxes": [{"normalized", "voxel", "source_voxel", "patient_mm_ras"}]}``
        (the source/mm entries only when the scan's mapping is known), and ``"mask"`` (None when no ``[SEG]``)
        for a segmenting network.
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
    scan, prompt_ids, prompt_mask = (torch.from_numpy(volume)[None].to(device), ids["input_ids"].to(device),
                                     ids["attention_mask"].to(device))
    tokens = network.generate(
        scan, prompt_ids, prompt_mask, max_new_tokens=min(max_new_tokens, limit - ids["input_ids"].shape[1]),
        eos_token_id=tokenizer.eos_token_id,
    )
    text = tokenizer.decode(tokens[0], skip_special_tokens=True).strip()
    result = {"image": str(image), "question": question, "answer": text,
              "boxes": describe_boxes(text, volume, sidecar, out_dir)}
    if hasattr(network, "segment"):
        for stale in ("mask.nii.gz", "mask.npy", "mask_overlay.png"):  # an earlier answer's mask is not this one's
            (out_dir / stale).unlink(missing_ok=True)
        probs, asked = network.segment(scan, prompt_ids, prompt_mask, tokens, tokenizer.eos_token_id)
        mask = (probs[0] > 0.5).cpu().numpy()
        result["mask"] = describe_mask(mask, volume, sidecar, out_dir) if bool(asked[0]) else None
    (out_dir / "answer.json").write_text(json.dumps(result, indent=2))
    logger.info("answer: %s", text)
    return result


class TextPromptedSegmenter(torch.nn.Module):
    """Image in, mask logits out: a LaMedSeg answering one fixed question — the image-only network MONAI Label and
    other "volume → mask" callers expect (``inferer(inputs, network)`` with no text argument).

    The question (e.g. "Segment the liver.") is a configuration value. A volume whose answer holds no ``[SEG]`` (the
    model says the target is absent) gets an all-background mask.

    Args:
        model: a :class:`~m3d_components.models.lamed_seg.LaMedSeg` (LoRA added, trainable parts chosen).
        tokenizer: its tokenizer.
        question: the fixed text prompt.
        max_new_tokens: the answer budget.
        weights: its trained tensors (``trained.safetensors``), loaded here, so that callers which only build the
            network (MONAI Label does not run the bundle's ``initialize``) get the trained model.
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer, question: str, max_new_tokens: int = 32,
        weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if not question or not question.strip():
            raise ValueError("the segmentation question is empty")
        if weights is not None:
            load_trained_state(model, weights)
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = with_image_tokens(question.strip(), model.num_image_tokens, caption=False)
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) canonical volumes → (B, 1, D, H, W) mask logits (sigmoid > 0.5 = foreground)."""
        self.model.eval()
        ids = self.tokenizer([self.prompt] * image.shape[0], return_tensors="pt").to(image.device)
        eos = self.tokenizer.eos_token_id
        image = torch.as_tensor(image, dtype=torch.float32)
        tokens = self.model.generate(image, ids["input_ids"], ids["attention_mask"],
                                     max_new_tokens=self.max_new_tokens, eos_token_id=eos)
        probs, _ = self.model.segment(image, ids["input_ids"], ids["attention_mask"], tokens, eos)
        return torch.logit(probs.clamp(1e-6, 1 - 1e-6))
