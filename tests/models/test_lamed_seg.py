"""LaMed + [SEG] segmentation: the combined loss, which samples get mask losses, and where gradients go."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss

from m3d_components.data.tokens import IMAGE_TOKEN, SEG_TOKEN
from m3d_components.models.lamed_seg import LaMedSeg
from m3d_components.models.segmentation import PromptableSegmenter, SegmenterConfig
from m3d_components.models.vision import ViTConfig
from tests.conftest import N_IMAGE_TOKENS, VIT, tiny_lamed

SEG_VIT = ViTConfig(img_size=VIT.img_size, patch_size=(4, 16, 16), hidden_size=32, mlp_dim=64, num_layers=1,
                    num_heads=2, cls_token=False)


@pytest.fixture
def model(llama_dir):
    lamed, tokenizer = tiny_lamed(llama_dir)
    torch.manual_seed(0)
    segmenter = PromptableSegmenter(SegmenterConfig(vit=SEG_VIT, num_heads=2, mlp_dim=64))
    return LaMedSeg.from_lamed(lamed, segmenter, tokenizer.convert_tokens_to_ids(SEG_TOKEN)).train(), tokenizer


def _batch(tokenizer, answers: list[str]):
    texts = [IMAGE_TOKEN * N_IMAGE_TOKENS + " Segment the liver. " + a for a in answers]
    ids = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    image = torch.rand(len(answers), 1, *VIT.img_size)
    seg = torch.zeros(len(answers), 1, *VIT.img_size)
    seg[:, :, 4:10, 16:40, 20:44] = 1
    return image, ids["input_ids"], ids["attention_mask"], labels, seg


def test_mask_losses_only_for_samples_with_seg_and_a_mask(model):
    model, tokenizer = model
    image, ids, mask, labels, seg = _batch(tokenizer, [f"It is here: {SEG_TOKEN}.", "There is no liver here.",
                                                       f"Here: {SEG_TOKEN}."])
    seg[2] = 0  # [SEG] but an empty target: no mask loss for it
    torch.manual_seed(1)
    out = model(image, ids, mask, labels, seg=seg)
    assert out["seg_index"].tolist() == [0]
    assert out["mask_logits"].shape == (1, 1, *VIT.img_size)
    expected = DiceLoss(sigmoid=True, smooth_nr=0, smooth_dr=1)(out["mask_logits"], seg[:1]) + torch.nn.functional.\
        binary_cross_entropy_with_logits(out["mask_logits"], seg[:1])
    assert torch.allclose(out["seg_loss"], expected)
    assert torch.allclose(out["loss"], out["lm_loss"] + out["seg_loss"])
    out["loss"].backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    for part in ("seg_projector.", "segmenter.mask_decoder.", "segmenter.image_encoder.", "llm."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part)), part


def test_negatives_and_no_targets_train_the_language_loss_alone(model):
    model, tokenizer = model
    image, ids, mask, labels, seg = _batch(tokenizer, ["There is no liver here.", "No liver is visible."])
    out = model(image, ids, mask, labels, seg=seg)
    assert "seg_loss" not in out and torch.equal(out["loss"], out["lm_loss"])
    assert set(model(image, ids, mask, labels)) == {"logits", "loss", "lm_loss"}
    with pytest.raises(ValueError, match="does not match the images"):
        model(image, ids, mask, labels, seg=seg[:, :, :8])


def test_collated_batches_carry_masks_for_seg_training(model):
    from m3d_components.engines.collate import InstructionCollator

    model, tokenizer = model
    mask = torch.zeros(1, *VIT.img_size, dtype=torch.bool)
    mask[:, 2:8, 10:30, 10:30] = True
    samples = [
        {"image": torch.rand(1, *VIT.img_size), "question": "Segment the liver.", "answer": f"Here: {SEG_TOKEN}.",
         "task": "ss", "seg": mask},
        {"image": torch.rand(1, *VIT.img_size), "question": "Which plane?", "answer": "A. Axial",
         "task": "vqa_closed"},
    ]
    batch = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128, masks=True)(samples)
    assert batch["seg"].shape == (2, 1, *VIT.img_size) and batch["seg"][1].sum() == 0
    assert batch["seg"][0].sum() == mask.sum()
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"], seg=batch["seg"])
    assert out["seg_index"].tolist() == [0] and torch.isfinite(out["loss"])
    assert "seg" not in InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128)(samples)


def test_packed_seg_batch_gives_the_padded_batch_losses_and_gradients(model):
    """Packed rows hold several samples; each [SEG] state goes to its own sample's image and mask."""
    from m3d_components.engines.collate import InstructionCollator

    model, tokenizer = model
    model.eval()  # the prompt projector's dropout would draw differently for the two orders
    generator = torch.Generator().manual_seed(0)
    answers = [f"It is here: {SEG_TOKEN}.", "There is no spleen in this scan.", "A. Axial",
               f"The liver, which spans most of the upper abdomen, is here: {SEG_TOKEN}.", f"Here: {SEG_TOKEN}."]
    samples = []
    for i, answer in enumerate(answers):
        mask = torch.zeros(1, *VIT.img_size, dtype=torch.bool)
        mask[:, 2 + i:8, 10:30 + 4 * i, 10:30] = True
        sample = {"image": torch.rand(1, *VIT.img_size, generator=generator), "question": "Segment the liver.",
                  "answer": answer, "task": "ss", "image_path": f"case{i}.npy"}
        if SEG_TOKEN in answer:
            sample["seg"] = mask
        samples.append(sample)
    padded = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128, masks=True)(samples)
    packed = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128, masks=True, pack=True)(samples)
    assert packed["input_ids"].shape[0] < len(samples), packed["position_ids"]
    order = [int(path[len("case"):-len(".npy")]) for path in packed["image_path"]]
    assert torch.equal(packed["seg"], padded["seg"][order])
    outs, grads = [], []
    for batch, mask in ((padded, {"attention_mask": padded["attention_mask"]}),
                        (packed, {"position_ids": packed["position_ids"]})):
        model.zero_grad()
        out = model(batch["image"], batch["input_ids"], labels=batch["labels"], seg=batch["seg"], **mask)
        out["loss"].backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert sorted(order[i] for i in outs[1]["seg_index"].tolist()) == outs[0]["seg_index"].tolist() == [0, 3, 4]
    for key in ("lm_loss", "seg_loss", "loss"):
        torch.testing.assert_close(outs[1][key], outs[0][key], rtol=1e-5, atol=1e-6, msg=key)
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("seg_projector.") for n in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_segment_finds_the_state_before_seg_in_generated_answers(model):
    """Masks of generated answers: a left-padded batch equals one-by-one, tokens after EOS are ignored, and a
    [SEG] generated first is found (its preceding state is the prompt's last)."""
    model, tokenizer = model
    model.eval()
    seg_id, eos = model.seg_token_id, tokenizer.eos_token_id
    prompts = [IMAGE_TOKEN * N_IMAGE_TOKENS + " Segment the liver.", IMAGE_TOKEN * N_IMAGE_TOKENS + " Liver?"]
    tokenizer.padding_side = "left"
    ids = tokenizer(prompts, return_tensors="pt", padding=True)
    word = tokenizer(" It is", add_special_tokens=False)["input_ids"]
    row0 = [*word, seg_id, eos, seg_id]
    new = torch.tensor([row0, [seg_id, eos] + [eos] * (len(row0) - 2)])
    image = torch.rand(2, 1, *VIT.img_size)
    probs, asked = model.segment(image, ids["input_ids"], ids["attention_mask"], new, eos)
    assert asked.tolist() == [True, True] and probs.shape == (2, 1, *VIT.img_size)
    for i in range(2):
        single = tokenizer(prompts[i], return_tensors="pt")
        alone, _ = model.segment(image[i : i + 1], single["input_ids"], single["attention_mask"], new[i : i + 1], eos)
        assert torch.allclose(alone[0], probs[i], atol=1e-5)
    none, asked = model.segment(image, ids["input_ids"], ids["attention_mask"], torch.full_like(new, eos), eos)
    assert not asked.any() and not none.any()
    typed = tokenizer([IMAGE_TOKEN * N_IMAGE_TOKENS + f" Segment {SEG_TOKEN} the liver."] * 2, return_tensors="pt")
    none, asked = model.segment(image, typed["input_ids"], typed["attention_mask"], torch.full_like(new, eos), eos)
    assert not asked.any() and not none.any()  # a [SEG] typed into the question asks for nothing
    # the extra [SEG] after EOS in row 0 is ignored: same mask as without it
    cut = new.clone()
    cut[0, -1] = eos
    again, _ = model.segment(image, ids["input_ids"], ids["attention_mask"], cut, eos)
    assert torch.allclose(again, probs)
