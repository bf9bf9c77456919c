"""Tiny real tokenizers and models, written to local folders for demos and tests.

They are the real transformers classes at toy sizes, saved with ``save_pretrained`` and read back through
:mod:`m3d_components.models.local`, so demos and tests go through the same offline path as a user's model. Everything
is deterministic: the same texts give the same tokenizer files, and the same seed gives the same safetensors bytes.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    get_cosine_schedule_with_warmup,
)

from m3d_components.models.local import load_tokenizer
from m3d_components.models.packing import pack_order, packed_rows

__all__ = [
    "WORDPIECE_SPECIAL_TOKENS",
    "BPE_SPECIAL_TOKENS",
    "CAUSAL_LM_FAMILIES",
    "train_wordpiece_tokenizer",
    "train_bpe_tokenizer",
    "make_tiny_text_encoder",
    "make_tiny_causal_lm",
    "pretrain_causal_lm",
]

WORDPIECE_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BPE_SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
CAUSAL_LM_FAMILIES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "phi3": (Phi3Config, Phi3ForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}

# Word-initial and word-internal characters are renamed into two private-use planes for training (see _wordpiece_vocab).
_HEAD_PLANE, _TAIL_PLANE, _PLANE_SIZE = 0xF0000, 0x100000, 0xFFFE
_SUBWORD_PREFIX = "##"


def train_wordpiece_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2000, lowercase: bool = True,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer on ``texts`` and save it to ``out_dir``.

    ``vocab_size`` is a target: the alphabet (the corpus characters plus ASCII, each as a word start and as a ``##``
    piece) is always kept, and training stops earlier when the corpus has no more merges to offer.

    Returns:
        the tokenizer; ``AutoTokenizer.from_pretrained(out_dir)`` gives the same one offline.
    """
    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = [
        word for text in _nonempty(texts) for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    ]
    letters = string.ascii_lowercase if lowercase else string.ascii_letters
    vocab = _wordpiece_vocab(words, vocab_size, letters + string.digits + string.punctuation)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix=_SUBWORD_PREFIX)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(token, vocab[token]) for token in ("[CLS]", "[SEP]")],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length,
    )
    wrapped.save_pretrained(out_dir)
    return wrapped


def train_bpe_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2000, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT/Llama style, ``<s>`` prepended) on ``texts`` and save it to ``out_dir``.

    Byte-level BPE never needs ``<unk>``: every byte is in the vocabulary, so any text round-trips.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(BPE_SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(_nonempty(texts), trainer)
    bos = BPE_SPECIAL_TOKENS["bos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"], **BPE_SPECIAL_TOKENS,
    )
    wrapped.save_pretrained(out_dir)
    return wrapped


def make_tiny_text_encoder(
    tokenizer_dir: str | Path, out_dir: str | Path, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4,
    intermediate_size: int = 256, max_position_embeddings: int = 512, seed: int = 0,
) -> Path:
    """Save a randomly initialised ``BertModel`` sized to the tokenizer, with the tokenizer files, in ``out_dir``."""
    _check_heads(hidden_size, num_heads)
    tokenizer = load_tokenizer(tokenizer_dir)
    # Truncation must never produce more positions than the model has embeddings for.
    tokenizer.model_max_length = min(tokenizer.model_max_length, max_position_embeddings)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
    )
    return _save(BertModel, config, tokenizer, out_dir, seed)


def make_tiny_causal_lm(
    family: str, tokenizer_dir: str | Path, out_dir: str | Path, hidden_size: int = 128, num_layers: int = 2,
    num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 256, max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised causal LM of ``family`` ("llama", "phi3", "qwen2") with the tokenizer files."""
    if family not in CAUSAL_LM_FAMILIES:
        raise ValueError(f"unknown causal LM family {family!r}; expected one of {sorted(CAUSAL_LM_FAMILIES)}")
    _check_heads(hidden_size, num_heads, num_kv_heads)
    config_class, model_class = CAUSAL_LM_FAMILIES[family]
    tokenizer = load_tokenizer(tokenizer_dir)
    # Phi-3 would otherwise keep its 4k "original" context (used by long-context RoPE scaling) above the real one.
    extra = {"original_max_position_embeddings": max_position_embeddings} if family == "phi3" else {}
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra,
    )
    return _save(model_class, config, tokenizer, out_dir, seed)


def pretrain_causal_lm(
    model_dir: str | Path, texts: Iterable[str], steps: int, batch_size: int = 32, learning_rate: float = 3e-3,
    row_length: int = 128, seed: int = 0,
) -> Path:
    """Next-token pre-training of a tiny causal LM on ``texts``, saved back in place.

    Demo only: it gives a tiny model the language and formats a real pre-trained LLM would bring. Each step draws
    ``batch_size`` documents and packs them into rows of ``row_length`` tokens (of the longest document's length when
    that is longer; see :func:`pack_documents`): position ids restart at every document, which makes transformers
    attend within documents only, so the step computes what a padded batch would while skipping the padding (44 % of
    a padded batch of demo documents).
    """
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    eos = tokenizer.eos_token or ""
    documents = tokenizer([t + eos for t in _nonempty(texts)])["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    model.train()
    for _ in range(steps):
        picks = torch.randint(len(documents), (batch_size,), generator=generator).tolist()
        input_ids, position_ids, labels = pack_documents([documents[i] for i in picks], row_length, pad_id)
        model(input_ids=input_ids, position_ids=position_ids, labels=labels, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.save_pretrained(model_dir)
    return Path(model_dir)


def pack_documents(
    documents: list[list[int]], row_length: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token documents packed first-fit (longest first) into rows: ``(input_ids, position_ids, labels)``.

    Rows are ``max(row_length, longest document)`` long (see :mod:`~m3d_components.models.packing`); the first
    token of each document and all padding are left out of the loss (-100), as in a padded batch.
    """
    if not documents:
        raise ValueError("no documents to pack")
    rows = [[documents[i] for i in row] for row in pack_order([len(d) for d in documents], row_length)]
    targets = [[[-100] * min(1, len(document)) + document[1:] for document in row] for row in rows]
    return packed_rows(rows, targets, pad_id, row_length)


def _nonempty(texts: Iterable[str]) -> list[str]:
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no text to train a tokenizer on: the corpus is empty or blank")
    return texts


def _wordpiece_vocab(words: list[str], vocab_size: int, extra_chars: str) -> dict[str, int]:
    """Learn a WordPiece vocabulary as BPE merges that do not depend on hash order.

    ``tokenizers``' WordPieceTrainer numbers its ``##x`` symbols in hash-map order, so ties between equally frequent
    merges fall differently from run to run. Renaming word-initial and word-internal characters into two
    private-use planes turns the same problem into plain BPE over a sorted alphabet, which is reproducible; the
    learned pieces are renamed back (internal ones with the ``##`` prefix) afterwards. ``extra_chars`` join the
    alphabet so that an unseen ASCII character does not turn a whole word into ``[UNK]``.
    """
    chars = sorted({c for word in words for c in word} | set(extra_chars))
    if len(chars) > _PLANE_SIZE:
        raise ValueError(f"the corpus has {len(chars)} distinct characters; at most {_PLANE_SIZE} are supported")
    head = {c: chr(_HEAD_PLANE + i) for i, c in enumerate(chars)}
    tail = {c: chr(_TAIL_PLANE + i) for i, c in enumerate(chars)}
    back = {v: k for k, v in (*head.items(), *tail.items())}
    bpe = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(WORDPIECE_SPECIAL_TOKENS),
        initial_alphabet=[*head.values(), *tail.values()], show_progress=False,
    )
    bpe.train_from_iterator((head[w[0]] + "".join(tail[c] for c in w[1:]) for w in words), trainer)
    internal = set(tail.values())
    vocab = {}
    for piece, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1]):
        text = "".join(back.get(c, c) for c in piece)
        vocab[_SUBWORD_PREFIX + text if piece[0] in internal else text] = len(vocab)
    return vocab


def _check_heads(hidden_size: int, num_heads: int, num_kv_heads: int | None = None) -> None:
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if num_kv_heads is not None and num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")


def _save(
    model_class: type[PreTrainedModel], config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast,
    out_dir: str | Path, seed: int,
) -> Path:
    """Initialise under a private RNG state (the caller's stays untouched) and save model and tokenizer together."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
