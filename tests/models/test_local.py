"""Local-only loading: hub ids and bad paths fail before transformers is asked; flags and attention fallbacks."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/huggingface_hub read it

import logging
import time
from pathlib import Path

import pytest
import torch
from transformers import DebertaV2Config, DebertaV2Model, LlamaConfig, LlamaForCausalLM
from transformers.utils import is_flash_attn_2_available

from m3d_components.models import local
from m3d_components.models.local import load_causal_lm, load_text_encoder, load_tokenizer, resolve_local_model

pytestmark = pytest.mark.usefixtures("no_network")

LOADERS = [resolve_local_model, load_tokenizer, load_text_encoder, load_causal_lm]


@pytest.fixture
def no_transformers(monkeypatch):
    """Fail if the loaders reach any ``from_pretrained``: bad values must be rejected before that."""

    def reached(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    for auto in (local.AutoTokenizer, local.AutoModel, local.AutoModelForCausalLM):
        monkeypatch.setattr(auto, "from_pretrained", reached)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    folder = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("hub_id", ["bert-base-uncased", "meta-llama/Llama-2-7b-hf"])
def test_hub_id_fails_fast_naming_the_value(loader, hub_id, no_transformers):
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        loader(hub_id)
    assert time.perf_counter() - start < 0.5
    message = str(err.value)
    assert f"'{hub_id}' is not a local folder" in message
    assert "nothing is downloaded at run time" in message
    assert f"hf download {hub_id} --local-dir" in message


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_missing_path_fails_fast_naming_the_value(loader, tmp_path, no_transformers):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model' does not exist.*nothing is downloaded"):
        loader(str(missing))


def test_folder_without_model_files_is_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path}' holds neither config.json nor tokenizer files"):
        resolve_local_model(tmp_path)


def test_a_file_is_not_a_model_folder(tmp_path):
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="pytorch_model.bin' is a file"):
        resolve_local_model(weights, what="LLM")


def test_resolves_relative_and_home_paths_to_absolute(tmp_path, monkeypatch):
    folder = tmp_path / "models" / "bert"
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("[PAD]\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_local_model("models/bert") == folder.resolve()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_local_model("~/models/bert") == folder.resolve()


def test_model_loaders_need_config_json(tmp_path, no_transformers):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_causal_lm(tmp_path)


def test_downloads_cannot_be_switched_back_on(tmp_path, no_transformers):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="local_files_only=False"):
        load_tokenizer(tmp_path, local_files_only=False)


@pytest.mark.parametrize("trust", [False, True])
def test_loaders_pass_offline_flags(tiny_llama_dir, monkeypatch, trust):
    seen = {}
    real = local.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(local.AutoModelForCausalLM, "from_pretrained", spy)
    kwargs = {"trust_remote_code": True} if trust else {}
    model = load_causal_lm(tiny_llama_dir, dtype=torch.bfloat16, **kwargs)
    assert seen["local_files_only"] is True
    assert seen["trust_remote_code"] is trust
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "sdpa"


def test_explicit_eager_is_kept(tiny_llama_dir):
    assert load_causal_lm(tiny_llama_dir, attn_implementation="eager").config._attn_implementation == "eager"


@pytest.mark.skipif(is_flash_attn_2_available(), reason="flash-attn is installed here")
def test_flash_attention_falls_back_to_sdpa_when_not_installed(tiny_llama_dir, caplog):
    with caplog.at_level(logging.WARNING, logger=local.__name__):
        model = load_causal_lm(tiny_llama_dir, attn_implementation="flash_attention_2")
    assert model.config._attn_implementation == "sdpa"
    assert "flash-attn is not installed" in caplog.text


def test_architecture_without_sdpa_falls_back_to_eager_with_warning(tmp_path, caplog):
    assert not DebertaV2Model._supports_sdpa, "pick another architecture without SDPA for this test"
    config = DebertaV2Config(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64)
    DebertaV2Model(config).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger=local.__name__):
        model = load_text_encoder(tmp_path)
    assert model.config._attn_implementation == "eager"
    assert "DebertaV2Model) has no sdpa attention; using eager" in caplog.text


def test_a_token_budget_beyond_the_positions_is_refused_before_loading(tmp_path):
    from transformers import BertConfig

    BertConfig(max_position_embeddings=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path)
    local.check_context(tmp_path, 64, "text encoder", "max_text_length")
    with pytest.raises(ValueError, match=r"max_text_length 96 exceeds the 64 positions of the text encoder in .*: "
                                         r"lower max_text_length"):
        local.check_context(tmp_path, 96, "text encoder", "max_text_length")
