"""LoRA merge into a plain Hugging Face folder, and one-scan inference, with a real tiny LaMed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from m3d_components.data.errors import DataError
from pathlib import Path

from m3d_components.engines.infer import answer_question, describe_boxes, draw_box_png, load_scan
from m3d_components.engines.merge import VISION_WEIGHTS, merge_lora
from m3d_components.models.trainable import STAGE_PARTS, LoRASettings, prepare_training
from tests.conftest import tiny_lamed

ITK = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
ITK_T1 = ITK / "KmeansTest_T1UCharRaw.nii.gz"
ITK_LABELS = ITK / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"


def test_merged_llm_loads_without_peft_and_gives_the_adapter_logits(llama_dir, tmp_path):
    model, tokenizer = tiny_lamed(llama_dir)
    prepare_training(model, STAGE_PARTS[2], LoRASettings())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # fresh LoRA B is zero: make the adapters change the output
    model.eval()  # LoRA dropout off
    assert isinstance(model.llm, PeftModel)
    ids = tokenizer(["Which imaging plane does this volume show?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.llm(input_ids=ids).logits
    merge_lora(model, tokenizer, tmp_path)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    vision = load_file(str(tmp_path / VISION_WEIGHTS))
    torch.testing.assert_close(vision["perceiver.projector.0.weight"], model.perceiver.projector[0].weight)
    info = json.loads((tmp_path / "lamed.json").read_text())
    assert info["num_image_tokens"] == model.num_image_tokens and info["vit"]["img_size"] == [16, 64, 64]


def test_answer_question_writes_answer_json(llama_dir, tmp_path):
    model, tokenizer = tiny_lamed(llama_dir)
    volume = tmp_path / "scan.npy"
    np.save(volume, np.random.default_rng(0).random((1, 16, 64, 64), dtype=np.float32))
    result = answer_question(model, tokenizer, volume, "Which plane?", tmp_path / "out", (16, 64, 64),
                             max_new_tokens=5)
    assert json.loads((tmp_path / "out" / "answer.json").read_text()) == result
    assert result["question"] == "Which plane?" and isinstance(result["answer"], str)


def test_answer_question_names_a_wrong_shape_and_a_missing_image(llama_dir, tmp_path):
    model, tokenizer = tiny_lamed(llama_dir)
    volume = tmp_path / "scan.npy"
    np.save(volume, np.random.default_rng(0).random((1, 8, 64, 64), dtype=np.float32))
    with pytest.raises(DataError, match="scan.npy.*wrong shape \\(1, 8, 64, 64\\), expected \\(1, 16, 64, 64\\)"):
        answer_question(model, tokenizer, volume, "Which plane?", tmp_path, (16, 64, 64))
    with pytest.raises(ValueError, match="no scan given"):
        answer_question(model, tokenizer, None, "Which plane?", tmp_path, (16, 64, 64))


def test_box_png_marks_the_box(tmp_path):
    from PIL import Image

    volume = np.zeros((1, 8, 32, 32), dtype=np.float32)
    path = draw_box_png(volume, [2, 4, 8, 5, 12, 20], tmp_path / "box.png")
    picture = np.asarray(Image.open(path))
    assert picture.shape[1] == 4 * picture.shape[0]  # four slices side by side
    red = (picture[..., 0] > 200) & (picture[..., 1] < 100)
    rows, cols = np.nonzero(red[:, : picture.shape[0]])
    scale = picture.shape[0] // 32
    assert rows.min() == 4 * scale and cols.min() == 8 * scale  # the box's top-left corner, scaled


@pytest.mark.skipif(not ITK_T1.is_file(), reason="Debian package insighttoolkit5-examples not installed")
def test_a_written_box_maps_back_to_the_real_scan(tmp_path):
    """A box in an answer → canonical voxels → the T1's own voxels and millimetres, and a PNG."""
    import nibabel as nib

    from m3d_components.data.boxes import mask_to_box, normalize_box
    from m3d_components.data.ingest import box_to_source, prepare_mask

    volume, sidecar = load_scan(ITK_T1, (16, 64, 64), tmp_path, window="percentile")
    labels = np.asarray(nib.load(str(ITK_LABELS)).dataobj)
    crop = box_to_source([0, 0, 0, 15, 63, 63], sidecar)  # the foreground crop, in source voxels
    value = next(v for v in range(1, 7) if np.all(np.asarray(mask_to_box(labels == v)[:3]) >= crop[:3])
                 and np.all(np.asarray(mask_to_box(labels == v)[3:]) <= crop[3:]))  # a class the crop keeps whole
    target = prepare_mask(ITK_LABELS, sidecar)[0] == value
    voxel_box = list(mask_to_box(target))
    box = normalize_box(voxel_box, target.shape)
    text = f"It is located at [{', '.join(f'{v:.3f}' for v in box)}]."
    [entry] = describe_boxes(text, volume, sidecar, tmp_path)
    assert Path(entry["png"]).is_file() and entry["normalized"] == pytest.approx(box, abs=1e-3)
    assert np.abs(np.asarray(entry["voxel"]) - voxel_box).max() <= 1  # 3-decimal text rounds by < 1 voxel
    expected = list(mask_to_box(labels == value))
    assert np.abs(np.asarray(entry["source_voxel"]) - expected).max() <= 3  # via the 16×64×64 grid and back
    mm = entry["patient_mm_ras"]
    assert all(mm[i] < mm[i + 3] for i in range(3))

    inverted = [box[3], *box[1:3], box[0], *box[4:]]  # D corners swapped, as a model may write them
    (tmp_path / "box_3.png").write_bytes(b"from an earlier answer")
    [entry] = describe_boxes(f"{text} Also [{', '.join(f'{v:.3f}' for v in inverted)}].", volume, sidecar, tmp_path)[1:]
    assert entry == {"normalized": pytest.approx(inverted, abs=1e-3), "invalid": "minimum above maximum along D"}
    assert sorted(p.name for p in tmp_path.glob("box_*.png")) == ["box_0.png"]  # none left from the earlier answer
