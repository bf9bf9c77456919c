"""Tiny real tokenizers and models: trained/built here, saved, and read back offline through models.local."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/huggingface_hub read it

import hashlib
from pathlib import Path

import pytest
import torch

from m3d_components.models.local import load_causal_lm, load_text_encoder, load_tokenizer
from m3d_components.models.tiny import (
    BPE_SPECIAL_TOKENS,
    CAUSAL_LM_FAMILIES,
    WORDPIECE_SPECIAL_TOKENS,
    make_tiny_causal_lm,
    make_tiny_text_encoder,
    pack_documents,
    train_bpe_tokenizer,
    train_wordpiece_tokenizer,
)

pytestmark = pytest.mark.usefixtures("no_network")

CORPUS = [
    "Axial CT of the abdomen in the portal venous phase.",
    "The liver is enlarged with a 3.2 cm hypodense lesion in segment VII.",
    "No acute intracranial hemorrhage or mass effect.",
    "Small left pleural effusion with adjacent atelectasis.",
    "The right kidney shows a simple cortical cyst.",
    "Coronal reconstruction demonstrates a normal spleen and pancreas.",
    "Non-contrast CT of the head: no midline shift.",
    "A 12 mm nodule in the right upper lobe, follow-up recommended.",
] * 4
FAMILIES = sorted(CAUSAL_LM_FAMILIES)


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wordpiece")
    train_wordpiece_tokenizer(CORPUS, folder, vocab_size=300)
    return folder


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bpe")
    train_bpe_tokenizer(CORPUS, folder, vocab_size=400)
    return folder


@pytest.fixture(scope="module")
def bert_dir(wordpiece_dir, tmp_path_factory) -> Path:
    return make_tiny_text_encoder(wordpiece_dir, tmp_path_factory.mktemp("bert"), max_position_embeddings=64)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wordpiece_round_trips_offline(wordpiece_dir):
    tokenizer = load_tokenizer(wordpiece_dir)
    text = "No acute intracranial hemorrhage or mass effect."
    ids = tokenizer(text)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert "[UNK]" not in tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.lower()
    assert tokenizer.model_max_length == 512
    assert [tokenizer.convert_tokens_to_ids(t) for t in WORDPIECE_SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tokenizer.pad_token == "[PAD]" and tokenizer.mask_token == "[MASK]"


def test_wordpiece_splits_unseen_words_into_pieces_not_unk(wordpiece_dir):
    tokenizer = load_tokenizer(wordpiece_dir)
    tokens = tokenizer.tokenize("Hepatosplenomegaly zq9")
    assert "[UNK]" not in tokens
    assert any(t.startswith("##") for t in tokens)
    assert tokenizer.convert_tokens_to_string(tokens) == "hepatosplenomegaly zq9"


def test_wordpiece_is_deterministic_and_respects_vocab_size(tmp_path):
    first = train_wordpiece_tokenizer(CORPUS, tmp_path / "a", vocab_size=200)
    train_wordpiece_tokenizer(CORPUS, tmp_path / "b", vocab_size=200)
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()
    assert len(first) == 200


def test_wordpiece_vocab_size_is_a_target_not_a_promise(tmp_path):
    small = train_wordpiece_tokenizer(CORPUS, tmp_path / "small", vocab_size=50)
    large = train_wordpiece_tokenizer(CORPUS, tmp_path / "large", vocab_size=5000)
    assert 50 < len(small) < len(large) < 5000  # the alphabet is always kept; merges stop when the corpus runs out


def test_wordpiece_can_keep_case(tmp_path):
    tokenizer = train_wordpiece_tokenizer(CORPUS, tmp_path, lowercase=False)
    assert tokenizer.decode(tokenizer("The CT")["input_ids"], skip_special_tokens=True) == "The CT"


def test_bpe_round_trips_any_text_offline(bpe_dir):
    tokenizer = load_tokenizer(bpe_dir)
    text = "Hypodense lesion (2×3 cm) — ü\nnext line"
    encoded = tokenizer(text)
    assert set(encoded) == {"input_ids", "attention_mask"}
    assert encoded["input_ids"][0] == tokenizer.bos_token_id
    assert tokenizer.decode(encoded["input_ids"], skip_special_tokens=True) == text
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in BPE_SPECIAL_TOKENS.items()}
    assert [tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id] == [
        ids["unk_token"], ids["bos_token"], ids["eos_token"], ids["pad_token"]]
    assert len(set(ids.values())) == 4


def test_bpe_is_deterministic(tmp_path):
    train_bpe_tokenizer(CORPUS, tmp_path / "a", vocab_size=350)
    train_bpe_tokenizer(CORPUS, tmp_path / "b", vocab_size=350)
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()


@pytest.mark.parametrize("train", [train_wordpiece_tokenizer, train_bpe_tokenizer])
def test_empty_corpus_is_rejected(train, tmp_path):
    with pytest.raises(ValueError, match="corpus is empty"):
        train(["", "  "], tmp_path)


def test_tiny_bert_loads_with_sdpa_and_masks_padding(bert_dir):
    tokenizer = load_tokenizer(bert_dir)
    model = load_text_encoder(bert_dir).eval()
    assert type(model).__name__ == "BertModel"
    assert model.config._attn_implementation == "sdpa"
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.model_max_length == 64  # capped to the position table
    texts = ["Small left pleural effusion.", "The right kidney shows a simple cortical cyst with no solid part."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
        alone = model(**tokenizer(texts[:1], return_tensors="pt")).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], 128)
    n = alone.shape[1]
    torch.testing.assert_close(hidden[0, :n], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_causal_lm_loads_with_sdpa_and_generates(family, bpe_dir, tmp_path):
    folder = make_tiny_causal_lm(family, bpe_dir, tmp_path)
    tokenizer = load_tokenizer(folder, padding_side="left")
    model = load_causal_lm(folder).eval()
    assert type(model) is CAUSAL_LM_FAMILIES[family][1]
    assert model.config._attn_implementation == "sdpa"
    prompts = ["The liver", "No acute intracranial hemorrhage"]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0  # left padding is really there
    with torch.no_grad():
        logits = model(**batch).logits
        alone = model(**tokenizer(prompts[:1], return_tensors="pt")).logits
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    torch.testing.assert_close(logits[0, -1], alone[0, -1], atol=1e-4, rtol=1e-4)
    assert out.shape[0] == 2 and batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_weights_depend_only_on_the_seed(family, bpe_dir, tmp_path):
    rng_before = torch.get_rng_state()
    paths = [make_tiny_causal_lm(family, bpe_dir, tmp_path / name, seed=seed) / "model.safetensors"
             for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert _sha256(paths[0]) == _sha256(paths[1]) != _sha256(paths[2])


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_documents_give_the_loss_of_a_padded_batch(family, bpe_dir, tmp_path):
    """Pre-training packs documents into rows; the loss must be the padded batch's, which holds only when attention
    stays inside each document (a leak across documents would change every token after the first document)."""
    folder = make_tiny_causal_lm(family, bpe_dir, tmp_path)
    tokenizer = load_tokenizer(folder)
    model = load_causal_lm(folder).eval()
    texts = [t + tokenizer.eos_token for t in CORPUS[:8]]
    input_ids, position_ids, labels = pack_documents(tokenizer(texts)["input_ids"], 64, tokenizer.pad_token_id)
    assert input_ids.shape[0] < len(texts)  # several documents share a row
    padded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        packed_loss = model(input_ids=input_ids, position_ids=position_ids, labels=labels, use_cache=False).loss
        loss = model(**padded, labels=padded["input_ids"].masked_fill(padded["attention_mask"] == 0, -100)).loss
        leaked = model(input_ids=input_ids, labels=labels, use_cache=False).loss  # one causal mask per row
    torch.testing.assert_close(packed_loss, loss, atol=1e-5, rtol=1e-5)
    assert abs(leaked.item() - loss.item()) > 1e-3


def test_text_encoder_weights_depend_only_on_the_seed(wordpiece_dir, tmp_path):
    paths = [make_tiny_text_encoder(wordpiece_dir, tmp_path / name, seed=seed) / "model.safetensors"
             for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    assert _sha256(paths[0]) == _sha256(paths[1]) != _sha256(paths[2])


def test_unknown_family_and_bad_head_counts_are_rejected(bpe_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown causal LM family 'gpt2'"):
        make_tiny_causal_lm("gpt2", bpe_dir, tmp_path)
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be divisible by num_kv_heads \(3\)"):
        make_tiny_causal_lm("llama", bpe_dir, tmp_path, num_kv_heads=3)
    with pytest.raises(ValueError, match=r"hidden_size \(100\) must be divisible by num_heads \(8\)"):
        make_tiny_text_encoder(bpe_dir, tmp_path, hidden_size=100, num_heads=8)
