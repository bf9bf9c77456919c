"""LaMed with real tiny LLMs (Llama, Phi-3, Qwen2) and a tokenizer trained here: tokens, splicing, loss, generation."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import torch.nn.functional as F

from m3d_components.data.tokens import BOX_END, BOX_START, IMAGE_TOKEN, SEG_TOKEN
from m3d_components.engines.collate import InstructionCollator
from m3d_components.models.lamed import add_lamed_tokens, lamed_tokenizer, resize_with_mean_init
from m3d_components.models.local import load_causal_lm, load_tokenizer
from tests.conftest import N_IMAGE_TOKENS, tiny_lamed

pytestmark = pytest.mark.usefixtures("no_network")

def _model(llm_dir, **kwargs):
    return tiny_lamed(llm_dir, **kwargs)


def test_tokens_added_once_seg_survives_decoding(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    size = len(tokenizer)
    assert add_lamed_tokens(tokenizer) == 4
    assert add_lamed_tokens(tokenizer) == 0
    assert len(tokenizer) == size + 4
    ids = tokenizer(f"{IMAGE_TOKEN}{IMAGE_TOKEN} It is {BOX_START}[0.1, 0.2]{BOX_END} {SEG_TOKEN}.")["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)) == 2
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert SEG_TOKEN in text and IMAGE_TOKEN not in text and BOX_START not in text


def test_new_rows_start_at_the_mean(llm_dir):
    llm = load_causal_lm(llm_dir)
    old = llm.get_input_embeddings().weight.detach().clone()
    old_out = llm.get_output_embeddings().weight.detach().clone()
    assert resize_with_mean_init(llm, old.shape[0] + 4) == 4
    new = llm.get_input_embeddings().weight
    torch.testing.assert_close(new[:-4], old)
    torch.testing.assert_close(new[-4:], old.mean(0, keepdim=True).expand(4, -1))
    torch.testing.assert_close(llm.get_output_embeddings().weight[-4:], old_out.mean(0, keepdim=True).expand(4, -1))


def test_image_features_go_where_the_placeholders_are(llm_dir):
    model, tokenizer = _model(llm_dir)
    assert model.num_image_tokens == N_IMAGE_TOKENS
    image = torch.rand(2, 1, 16, 64, 64)
    # Text before the image in one sample, left padding in the other: fixed offsets would get both wrong.
    first = tokenizer("Axial CT " + IMAGE_TOKEN * N_IMAGE_TOKENS + " Which plane?")["input_ids"]
    second = tokenizer(IMAGE_TOKEN * N_IMAGE_TOKENS + " Which plane?")["input_ids"]
    pad = len(first) - len(second)
    ids = torch.tensor([first, [tokenizer.pad_token_id] * pad + second])
    embeds = model.embed(ids, image)
    features = model.encode_images(image)
    plain = model.llm.get_input_embeddings()(ids)
    is_image = ids == model.image_token_id
    for b in range(2):
        torch.testing.assert_close(embeds[b][is_image[b]], features[b])
        torch.testing.assert_close(embeds[b][~is_image[b]], plain[b][~is_image[b]])


def test_placeholder_count_and_missing_image_are_clear_errors(llm_dir):
    model, tokenizer = _model(llm_dir)
    ids = torch.tensor([tokenizer(IMAGE_TOKEN * (N_IMAGE_TOKENS - 1) + " Which plane?")["input_ids"]])
    with pytest.raises(ValueError, match=f"hold \\[{N_IMAGE_TOKENS - 1}\\].*gives {N_IMAGE_TOKENS}"):
        model.embed(ids, torch.rand(1, 1, 16, 64, 64))
    full = torch.tensor([tokenizer(IMAGE_TOKEN * N_IMAGE_TOKENS + " Which plane?")["input_ids"]])
    with pytest.raises(ValueError, match="no image"):
        model.embed(full, None)
    with pytest.raises(ValueError, match="expected .*32, 256, 256|shape"):
        model.embed(full, torch.rand(1, 1, 32, 256, 256))


def _samples(n=3):
    questions = ["Which plane?", "Where is the liver in this image? Please give its box.", "Describe the scan."]
    answers = ["A. Axial", "The box is [0.125, 0.32, 0.281, 0.719, 0.754, 0.695].", "Axial CT of the abdomen."]
    return [
        {"image": torch.rand(1, 16, 64, 64), "question": questions[i % 3], "answer": answers[i % 3],
         "task": "caption" if i % 3 == 2 else "vqa_open", "image_path": f"case{i}.npy"}
        for i in range(n)
    ]


def test_loss_covers_answer_and_eos_only(llm_dir):
    model, tokenizer = _model(llm_dir)
    batch = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128)(_samples())
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"])
    answer_ids = tokenizer([" " + s["answer"] for s in _samples()], add_special_tokens=False)["input_ids"]
    for b, ids in enumerate(answer_ids):
        targets = batch["labels"][b][batch["labels"][b] != -100].tolist()
        assert targets == ids + [tokenizer.eos_token_id]
    # the loss over the full logits; with labels only the supervised positions reach the LM head
    full = model(batch["image"], batch["input_ids"], batch["attention_mask"])["logits"]
    expected = F.cross_entropy(full[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out["loss"], expected)
    supervised = batch["labels"][:, 1:] != -100
    torch.testing.assert_close(out["logits"], full[:, :-1][supervised])


def test_prompt_longer_than_the_context_is_named(llm_dir):
    _, tokenizer = _model(llm_dir)
    samples = _samples(1)
    samples[0]["question"] = "Which plane? " * 40
    with pytest.raises(ValueError, match="case0.npy.*leaving no room.*64"):
        InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=64)(samples)


def test_batched_generation_equals_one_by_one(llm_dir):
    model, tokenizer = _model(llm_dir)
    batch = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128)(_samples())
    assert batch["prompt_mask"][:, 0].tolist() != [1, 1, 1]  # prompts differ in length: left padding is exercised
    together = model.generate(batch["image"], batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=12)
    for b in range(3):
        keep = batch["prompt_mask"][b].bool()
        alone = model.generate(
            batch["image"][b : b + 1], batch["prompt_ids"][b : b + 1, keep], batch["prompt_mask"][b : b + 1, keep],
            max_new_tokens=12,
        )
        assert together[b, : alone.shape[1]].tolist() == alone[0].tolist()


def test_packed_batch_gives_the_padded_batch_loss_and_gradients(llm_dir):
    """``pack=True`` puts short samples side by side in rows as long as the longest sample; transformers keeps
    attention inside each sample (position ids restart), and the images follow the placeholder blocks' order."""
    model, tokenizer = _model(llm_dir)
    samples = _samples(6)
    samples[5]["answer"] = " ".join(["Axial CT of the upper abdomen in the arterial phase."] * 4)
    padded = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128)(samples)
    packed = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128, pack=True)(samples)
    assert "attention_mask" not in packed and packed["input_ids"].shape[1] == padded["input_ids"].shape[1]
    assert packed["input_ids"].shape[0] < 6, packed["position_ids"]
    order = [int(path[len("case"):-len(".npy")]) for path in packed["image_path"]]
    assert sorted(order) == list(range(6)) and order[0] == 5  # longest first
    assert torch.equal(packed["image"], padded["image"][order])
    assert [samples[i]["answer"] for i in order] == packed["answer"]
    assert int((packed["labels"] != -100).sum()) == int((padded["labels"] != -100).sum())
    results = []
    runs = ((padded, {"attention_mask": padded["attention_mask"]}), (packed, {"position_ids": packed["position_ids"]}))
    for batch, mask in runs:
        model.zero_grad()
        loss = model(batch["image"], batch["input_ids"], labels=batch["labels"], **mask)["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss, grads), (packed_loss, packed_grads) = results
    torch.testing.assert_close(packed_loss, loss, rtol=1e-5, atol=1e-6)
    assert grads and grads.keys() == packed_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_images_must_match_the_blocks(llm_dir):
    model, tokenizer = _model(llm_dir)
    samples = _samples(4)
    packed = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128, pack=True)(samples)
    assert packed["input_ids"].shape[0] < 4
    with pytest.raises(ValueError, match="3 images for .* packed rows holding 4 image placeholder blocks"):
        model.embed(packed["input_ids"], packed["image"][:3], packed=True)
    with pytest.raises(ValueError, match="images for .* prompts|hold \\[16\\]"):  # packed rows read as unpacked
        model.embed(packed["input_ids"], packed["image"])


def test_static_cache_generation_equals_the_dynamic_cache(llm_dir):
    """A fixed-shape KV cache (``cache_implementation="static"``, what CUDA-graph decoding needs) gives the same
    tokens for a left-padded batch, for every LLM family."""
    model, tokenizer = _model(llm_dir)
    batch = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128)(_samples())
    dynamic = model.generate(batch["image"], batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=12)
    static = model.generate(batch["image"], batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=12,
                            cache_implementation="static")
    assert static.tolist() == dynamic.tolist()


def test_generation_reuses_the_kv_cache(llm_dir):
    model, tokenizer = _model(llm_dir)
    batch = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128)(_samples(2))
    lengths = []

    def record(module, args, kwargs):
        # The first step embeds the spliced prompt; later steps feed only the new token's id.
        step = kwargs["inputs_embeds"] if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]
        lengths.append(step.shape[1])

    hook = model.llm.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = model.generate(batch["image"], batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=6,
                             eos_token_id=None)
    finally:
        hook.remove()
    assert out.shape[1] == 6
    assert lengths == [batch["prompt_ids"].shape[1]] + [1] * 5  # the prompt once, then one new token per step


def test_generation_refuses_right_padding_and_overlong_requests(llm_dir):
    model, tokenizer = _model(llm_dir)
    batch = InstructionCollator(tokenizer, N_IMAGE_TOKENS, max_length=128)(_samples())
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(batch["image"], batch["input_ids"], batch["attention_mask"], max_new_tokens=4)
    with pytest.raises(ValueError, match="exceeds the LLM context of 512"):
        model.generate(batch["image"], batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=600)


def test_missing_llm_path_fails_fast(tmp_path):
    with pytest.raises(FileNotFoundError, match="LLM"):
        lamed_tokenizer(tmp_path / "no-such-llm")


def test_pooling_and_context_are_checked_before_the_llm_loads(llama_dir, tmp_path):
    """A pooling that does not divide the patch grid, or a context too short for the image tokens, is named before
    the (here missing) LLM is opened."""
    from m3d_components.models.lamed import build_lamed
    from tests.conftest import VIT

    tokenizer = lamed_tokenizer(llama_dir)
    with pytest.raises(ValueError, match=r"patch grid \(4, 4, 4\) must be divisible by pooling_size 3"):
        build_lamed(VIT, tmp_path / "no-llm", tokenizer, pooling_size=3)
    short = lamed_tokenizer(llama_dir, model_max_length=N_IMAGE_TOKENS)
    with pytest.raises(ValueError, match=rf"max_length {N_IMAGE_TOKENS} leaves no room for the {N_IMAGE_TOKENS} "
                                         r"image tokens .*raise max_length"):
        build_lamed(VIT, tmp_path / "no-llm", short)
