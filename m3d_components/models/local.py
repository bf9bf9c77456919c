"""Load Hugging Face tokenizers and models from local folders only (SPEC §9, "No network at run time").

Every path a config or a user gives is checked here first, so a hub id or a typo fails at once with a message that
says how to fetch the model, instead of a timeout or a download deep inside ``from_pretrained``. The loaders always
pass ``local_files_only=True``; remote code stays off unless the caller asks for it by name.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import is_flash_attn_2_available

__all__ = ["CONFIG_FILE", "TOKENIZER_FILES", "resolve_local_model", "resolve_gguf", "load_tokenizer",
           "check_context", "load_text_encoder", "load_causal_lm"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
# Any one of these marks a tokenizer folder (fast tokenizer, its config, WordPiece, SentencePiece, byte-level BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
# "name" or "org/name" as the hub spells them; used only to word the error, never to contact the hub.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _download_hint(value: str) -> str:
    repo = value if _HUB_ID.fullmatch(value) else "<hub-id>"
    return (
        "Models are read from local folders only; nothing is downloaded at run time. On a machine with network, "
        f"fetch it once with `hf download {repo} --local-dir <folder>` (`huggingface-cli download` in older "
        "huggingface_hub), copy the folder here and pass its path."
    )


def resolve_local_model(name_or_path: str | Path, what: str = "model") -> Path:
    """Return the absolute path of a local Hugging Face model or tokenizer folder, or fail before any download.

    Args:
        name_or_path: a folder holding ``config.json`` and/or tokenizer files.
        what: what the folder is for ("text encoder", "LLM", "tokenizer"), used in error messages.

    Raises:
        ValueError: the value is a hub id (not a local folder) or a file.
        FileNotFoundError: the folder does not exist or holds no model/tokenizer files.
    """
    value = str(name_or_path)
    path = Path(value).expanduser()
    if path.is_dir():
        if any((path / name).is_file() for name in (CONFIG_FILE, *TOKENIZER_FILES)):
            return path.resolve()
        raise FileNotFoundError(
            f"{what} folder '{value}' holds neither {CONFIG_FILE} nor tokenizer files ({', '.join(TOKENIZER_FILES)})"
        )
    if path.exists():
        raise ValueError(f"{what} '{value}' is a file; pass the folder that holds {CONFIG_FILE} and the weights")
    if _HUB_ID.fullmatch(value):
        raise ValueError(f"{what} '{value}' is not a local folder (a hub id?). {_download_hint(value)}")
    raise FileNotFoundError(f"{what} folder '{value}' does not exist ({path.absolute()}). {_download_hint(value)}")


def resolve_gguf(path: str | Path) -> tuple[Path, str] | None:
    """(folder, file name) when ``path`` is a ``.gguf`` file, or a folder with no config.json and exactly one
    ``.gguf`` file (e.g. a model installed as a Python package); None for an ordinary Hugging Face folder.

    Raises:
        ImportError: a GGUF model is given but the ``gguf`` package that transformers reads it with is missing.
    """
    candidate = Path(path).expanduser()
    if candidate.is_file() and candidate.suffix == ".gguf":
        found = candidate
    elif candidate.is_dir() and not (candidate / CONFIG_FILE).is_file():
        files = sorted(candidate.glob("*.gguf"))
        if len(files) != 1:
            return None
        found = files[0]
    else:
        return None
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"{found} is a GGUF model; reading it needs the 'gguf' package (pip install gguf)")
    return found.parent.resolve(), found.name


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False, **kwargs: Any) -> PreTrainedTokenizerBase:
    """``AutoTokenizer`` from a local folder or GGUF file; extra keyword arguments go to ``from_pretrained``."""
    if kwargs.pop("local_files_only", True) is not True:
        raise ValueError("local_files_only=False is not supported: nothing is downloaded at run time")
    gguf = resolve_gguf(path)
    if gguf is not None:
        return AutoTokenizer.from_pretrained(gguf[0], gguf_file=gguf[1], local_files_only=True, **kwargs)
    folder = resolve_local_model(path, "tokenizer")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code, **kwargs)


def check_context(path: str | Path, length: int, what: str, setting: str) -> None:
    """Refuse a token budget (``setting``) beyond the positions of the model in ``path``, before the model is built:
    past them a BERT-style encoder fails deep inside its position embeddings.

    Raises:
        ValueError: e.g. ``max_text_length 1024 exceeds the 512 positions of the text encoder in /models/bert``.
    """
    config = resolve_local_model(path, what) / CONFIG_FILE
    if not config.is_file():  # a tokenizer-only folder: loading the model names what is missing
        return
    limit = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    if limit is not None and length > limit:
        raise ValueError(f"{setting} {length} exceeds the {limit} positions of the {what} in {config.parent}: "
                         f"lower {setting}")


def load_text_encoder(
    path: str | Path,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    *,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A BERT-style encoder (``AutoModel``) from a local folder; ``dtype=None`` keeps the checkpoint's dtype."""
    return _load(AutoModel, path, "text encoder", dtype, attn_implementation, trust_remote_code)


def load_causal_lm(
    path: str | Path,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    *,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A causal LM (``AutoModelForCausalLM``) from a local folder; ``dtype=None`` keeps the checkpoint's dtype.

    A GGUF file (or a folder holding one, see :func:`resolve_gguf`) is de-quantised by transformers to ``dtype``
    (default float32); such weights are real but lossy, fine for data generation and tests.
    """
    gguf = resolve_gguf(path)
    if gguf is not None:
        return AutoModelForCausalLM.from_pretrained(
            gguf[0], gguf_file=gguf[1], dtype=dtype or torch.float32, local_files_only=True,
            attn_implementation=_installed_attention(attn_implementation),
        )
    return _load(AutoModelForCausalLM, path, "LLM", dtype, attn_implementation, trust_remote_code)


def _load(
    auto_class: type, path: str | Path, what: str, dtype: torch.dtype | None, attn: str, trust_remote_code: bool
) -> PreTrainedModel:
    folder = resolve_local_model(path, what)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{what} folder '{folder}' has no {CONFIG_FILE}: it holds a tokenizer, not a model")
    requested = _installed_attention(attn)
    # None lets transformers pick SDPA and fall back to eager for architectures without it (an explicit "sdpa"
    # raises there); the fallback is reported below.
    model = auto_class.from_pretrained(
        folder,
        dtype=dtype,
        attn_implementation=None if requested == "sdpa" else requested,
        local_files_only=True,
        trust_remote_code=trust_remote_code,
    )
    used = model.config._attn_implementation
    if used != requested:
        logger.warning("%s %s (%s) has no %s attention; using %s", what, folder, type(model).__name__, requested, used)
    return model


def _installed_attention(requested: str) -> str:
    """Swap flash_attention_2 for SDPA when flash-attn is missing: transformers 5 would fetch a hub kernel instead."""
    if requested == "flash_attention_2" and not is_flash_attn_2_available():
        logger.warning("attn_implementation='flash_attention_2' requested but flash-attn is not installed; using sdpa")
        return "sdpa"
    return requested
