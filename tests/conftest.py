"""Fixtures shared across test folders: real tiny LLMs (Llama, Phi-3, Qwen2) with a BPE tokenizer trained here,
and a tiny LaMed built on them."""

import socket

import pytest
import torch

from m3d_components.models.lamed import build_lamed, lamed_tokenizer
from m3d_components.models.tiny import CAUSAL_LM_FAMILIES, make_tiny_causal_lm, train_bpe_tokenizer
from m3d_components.models.vision import ViTConfig

CORPUS = [
    "Axial CT of the upper abdomen in the arterial phase.",
    "Which imaging plane does this volume show? Choices: A. Axial B. Coronal C. Sagittal D. Oblique",
    "The liver spans 16.2 cm and the spleen 11.0 cm. A hypodense lesion in the right kidney.",
    "Where is the liver in this image? Please give its box. The box is [0.125, 0.32, 0.281, 0.719, 0.754, 0.695].",
] * 8
VIT = ViTConfig(img_size=(16, 64, 64), patch_size=(4, 16, 16), hidden_size=32, mlp_dim=64, num_layers=1, num_heads=2)
N_IMAGE_TOKENS = 8  # grid (4, 4, 4) pooled by 2


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    train_bpe_tokenizer(CORPUS, out, vocab_size=300)
    return out


@pytest.fixture(scope="session", params=sorted(CAUSAL_LM_FAMILIES))
def llm_dir(request, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return make_tiny_causal_lm(request.param, tokenizer_dir, out, hidden_size=64, num_layers=2, num_heads=4,
                               num_kv_heads=2, intermediate_size=128)


@pytest.fixture(scope="session")
def llama_dir(tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama_only")
    return make_tiny_causal_lm("llama", tokenizer_dir, out, hidden_size=64, num_layers=2, num_heads=4,
                               num_kv_heads=2, intermediate_size=128)


def tiny_lamed(llm_dir, **kwargs):
    """A LaMed on the tiny ViT and the LLM in ``llm_dir``, in eval mode, with its tokenizer."""
    tokenizer = lamed_tokenizer(llm_dir)
    torch.manual_seed(0)
    return build_lamed(VIT, llm_dir, tokenizer, **kwargs).eval(), tokenizer




def free_port() -> int:
    """A TCP port no process listens on now, for a gloo rendezvous between test processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
