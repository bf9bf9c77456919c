"""ChatLM: batched greedy completion equals one prompt at a time; priming, context errors, GGUF detection."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from m3d_components.models.chat import ChatLM
from m3d_components.models.local import resolve_gguf


def _prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You write radiology questions."}, {"role": "user", "content": text}]


PROMPTS = [
    _prompt("Axial CT of the upper abdomen."),
    _prompt("The liver spans 16.2 cm and the spleen 11.0 cm. A hypodense lesion in the right kidney."),
    _prompt("Which imaging plane?"),
]


@pytest.fixture(scope="module")
def chat(llama_dir):
    torch.manual_seed(0)
    return ChatLM.from_local(llama_dir, batch_size=3, max_new_tokens=6)


def test_batched_replies_equal_one_by_one_in_input_order(chat):
    batched = chat.complete(PROMPTS)
    single = [chat.complete([p], batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) > 1  # different prompts, different (random-model) replies: the order is meaningful


def test_stop_strings_end_each_reply_on_its_own(chat):
    free = chat.complete(PROMPTS, max_new_tokens=12)
    word = free[1].split()[1]  # something the model writes for prompt 1
    stopped = chat.complete(PROMPTS, max_new_tokens=12, stop=[word])
    assert stopped[1].endswith(word) and len(stopped[1]) <= len(free[1])
    assert free[1].startswith(stopped[1])
    for f, s in zip(free, stopped):  # the other replies are cut at the same word or left whole
        assert f.startswith(s) and (s == f or s.endswith(word))


def test_prefixes_prime_each_reply(chat):
    replies = chat.complete(PROMPTS[:2], prefix=["Question:", "Yes or No:"])
    assert replies[0].startswith("Question:") and replies[1].startswith("Yes or No:")
    with pytest.raises(ValueError, match="1 prefixes for 2 prompts"):
        chat.complete(PROMPTS[:2], prefix=["Question:"])


def test_without_a_chat_template_the_roles_are_written_out(chat):
    assert not chat.tokenizer.chat_template
    assert chat.render(PROMPTS[0]).endswith("user: Axial CT of the upper abdomen.\n\nassistant: ")


def test_a_prompt_too_long_for_the_context_is_named(chat):
    context = chat.context
    long = _prompt("lesion " * context)
    assert chat.too_long([PROMPTS[0], long, PROMPTS[1]]) == [1]
    with pytest.raises(ValueError, match=f"prompt 1 has .* context of {context}"):
        chat.complete([PROMPTS[0], long])


def test_a_template_without_a_system_turn_gets_the_system_text_in_the_first_user_turn(chat):
    chat.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    )
    try:
        rendered = chat.render(PROMPTS[0])
        assert rendered == "<user>You write radiology questions.\n\nAxial CT of the upper abdomen.<assistant>"
    finally:
        chat.tokenizer.chat_template = None


def test_gguf_files_are_recognised(tmp_path, llama_dir):
    assert resolve_gguf(llama_dir) is None  # an ordinary Hugging Face folder
    (tmp_path / "model.Q4.gguf").write_bytes(b"GGUF")
    if importlib.util.find_spec("gguf") is None:
        with pytest.raises(ImportError, match="pip install gguf"):
            resolve_gguf(tmp_path)
    else:
        assert resolve_gguf(tmp_path) == (tmp_path.resolve(), "model.Q4.gguf")
        assert resolve_gguf(tmp_path / "model.Q4.gguf") == (tmp_path.resolve(), "model.Q4.gguf")
        (tmp_path / "other.gguf").write_bytes(b"GGUF")
        assert resolve_gguf(tmp_path) is None  # two candidates: not guessed
