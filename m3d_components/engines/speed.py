"""Speed benchmark of the M3D training and inference steps (SPEC §8): samples/s, step time, peak memory and MFU.

Each stage times one step of the project's own code in two configurations, in the same process and on the same
machine: the optimized one, and a reference-style one that runs the way the original M3D code does (eager attention,
fp32 weights under autocast, unfused AdamW, one prompt at a time). The speed-up is therefore a ratio measured side by
side, not a comparison with a number from elsewhere. Stages register in ``STAGES`` and share one timing harness
(``Harness``): ``clip`` (M3D-CLIP step), ``lamed`` (LaMed stage-2 step: LoRA r16 + ViT + perceiver + embeddings + LM
head), ``seg`` (lamed_seg step), ``generate`` (bench generation) and ``loader`` (volumes/s through the augmentation).

Numbers come from this module only, never from tests. Usage (``tools/benchmark.py`` and ``m3d bench-speed`` are the
same entry point)::

    python tools/benchmark.py --stages clip lamed seg generate loader --scale tiny --steps 10 --warmup 2  # CPU
    python tools/benchmark.py --stages lamed --scale paper --steps 20 --warmup 5 --json lamed.json      # H100/H200

References: the FLOP count of a step is PaLM's (Chowdhery et al., 2022, appendix B), as in nanoGPT's
``estimate_mfu`` (karpathy/nanoGPT, ``model.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
import transformers
from torch import nn
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from m3d_components.data.dataset import VolumeDataset
from m3d_components.data.transforms import AUGMENTATION_KEY, apply_augmentation, train_transforms
from m3d_components.data.volume import CACHE_DTYPES, save_volume
from m3d_components.engines.optim import adamw
from m3d_components.models.clip import M3DCLIP
from m3d_components.models.compiled import compile_blocks
from m3d_components.models.lamed import LaMed
from m3d_components.models.lamed_seg import LaMedSeg
from m3d_components.models.perceiver import SpatialPoolingPerceiver
from m3d_components.models.segmentation import PromptableSegmenter, SegmenterConfig
from m3d_components.models.trainable import LoRASettings, prepare_training
from m3d_components.models.vision import ViTConfig, VisionTransformer3D

__all__ = [
    "CLIP_SCALES",
    "GENERATE_SCALES",
    "SCALES",
    "STAGES",
    "Harness",
    "LAMED_SCALES",
    "clip_stage",
    "clip_train_flops",
    "generate_stage",
    "lamed_stage",
    "lamed_train_flops",
    "loader_stage",
    "linear_weights",
    "markdown_table",
    "measure_bf16_peak",
    "run_benchmark",
    "seg_stage",
    "segmenter_train_flops",
    "transformer_train_flops",
    "vit_train_flops",
]

logger = logging.getLogger(__name__)

SCALES = ("tiny", "paper")
Step = Callable[[], None]
# batch size → (one training step, ready to call repeatedly; the FLOPs of that step)
Build = Callable[[int], tuple[Step, float]]


# --- FLOPs ----------------------------------------------------------------------------------------------------------


def linear_weights(module: nn.Module) -> int:
    """Weights of every ``nn.Linear`` in ``module``: the parameters that cost a multiply-add per token.

    Embedding lookups, biases and norms are left out; they cost no matmul and add well under 1 % of the FLOPs.
    """
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def transformer_train_flops(linear_params: int, layers: int, tokens: int, hidden: int) -> float:
    """FLOPs of forward + backward for one sequence through a bidirectional transformer.

    ``6 · N · T + 12 · L · T² · d`` (PaLM, appendix B; nanoGPT's ``estimate_mfu`` per token, times T): each weight
    does a multiply-add per token forward (2) and two backward (4); per layer, QKᵀ and AV cost 2 · T² · d each forward
    and twice that backward. No causal mask is skipped in an encoder, so the attention term is exact here.

    Args:
        linear_params: N, weights that multiply each token (see ``linear_weights``).
        layers: L, transformer layers.
        tokens: T, sequence length.
        hidden: d, model width (heads × head size).
    """
    return 6.0 * linear_params * tokens + 12.0 * layers * tokens**2 * hidden


def vit_train_flops(encoder: VisionTransformer3D, image_grad: bool = False) -> float:
    """Forward + backward FLOPs of one volume through the 3D ViT (2049 tokens of width 768 at the paper size).

    The patch embedding sees the N patches only; the blocks also carry the CLS token. A volume needs no gradient in
    training, so the patch embedding's backward is its weight gradient alone (4 · N · T) unless ``image_grad``.
    """
    config = encoder.config
    tokens = config.num_patches + int(config.cls_token)
    blocks = transformer_train_flops(linear_weights(encoder.blocks), config.num_layers, tokens, config.hidden_size)
    return blocks + (6.0 if image_grad else 4.0) * linear_weights(encoder.patch_embedding) * config.num_patches


def clip_train_flops(model: M3DCLIP, text_length: int) -> float:
    """Forward + backward FLOPs of one image–text pair: both towers plus the projection heads (one token each).

    The (B, B) similarity matrix of the loss is left out: B² · E is negligible next to the towers.
    """
    text = model.language_encoder.config
    text_flops = transformer_train_flops(
        linear_weights(model.language_encoder), text.num_hidden_layers, text_length, text.hidden_size
    )
    heads = 6.0 * (linear_weights(model.mm_vision_proj) + linear_weights(model.mm_language_proj))
    return vit_train_flops(model.vision_encoder) + text_flops + heads


# --- harness --------------------------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer stopped now has counted it (CUDA launches are asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    """Free what the last configuration left behind, so the next one starts from the same memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory in GiB and what it is: CUDA's allocator peak, or on CPU the process's max RSS.

    ``ru_maxrss`` (KiB on Linux) is a high-water mark of the whole process that cannot be reset, so on CPU a row
    never shows less than the rows measured before it.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS"


@dataclass(frozen=True)
class Harness:
    """What every stage shares: where it runs, how many steps to time, and the peak that MFU is a fraction of.

    Args:
        device: where the models and inputs go.
        steps: timed steps; the median and p10/p90 are reported (10 or more for a figure worth recording).
        warmup: untimed steps first, to pay for allocator growth, kernel selection and lazy initialisation.
        peak_flops: measured bf16 matmul FLOP/s on a GPU (``measure_bf16_peak``); None on CPU, where no MFU is given.
        compile_blocks: also time the optimized configuration with every transformer block compiled
            (:func:`~m3d_components.models.compiled.compile_blocks`); the warm-up steps then pay the compilation.
    """

    device: torch.device
    steps: int
    warmup: int
    peak_flops: float | None = None
    compile_blocks: bool = False

    def setups(self, setups: Sequence[Any]) -> list[Any]:
        """The configurations to time: the compiled one only when asked for."""
        return [setup for setup in setups if self.compile_blocks or not setup.compiled]

    def time_steps(self, step: Step) -> list[float]:
        """Seconds of each timed step, synchronising around every step so each one's GPU work is in its time."""
        for _ in range(self.warmup):
            step()
        seconds = []
        for _ in range(self.steps):
            _synchronize(self.device)
            start = time.perf_counter()
            step()
            _synchronize(self.device)
            seconds.append(time.perf_counter() - start)
        return seconds

    def measure(self, configuration: str, batch: int, build: Build) -> dict[str, Any]:
        """Build one configuration at ``batch`` and time its step; the figures of one table row."""
        step, flops = build(batch)
        p10, median, p90 = np.percentile(self.time_steps(step), [10, 50, 90])
        memory, memory_kind = _peak_memory(self.device)
        return {
            "configuration": configuration,
            "batch": batch,
            "status": "ok",
            "note": "",
            "samples_per_s": batch / median,
            "step_ms_median": 1e3 * median,
            "step_ms_p10": 1e3 * p10,
            "step_ms_p90": 1e3 * p90,
            "peak_memory_gib": memory,
            "memory_kind": memory_kind,
            "flops_per_step": flops,
            "peak_tflops": self.peak_flops / 1e12 if self.peak_flops else None,
            "mfu": flops / median / self.peak_flops if self.peak_flops else None,
        }

    def measure_first_fitting(self, configuration: str, batches: Sequence[int], build: Build) -> list[dict[str, Any]]:
        """Measure at the first of ``batches`` that fits in memory; every batch that does not gets a row saying so."""
        rows: list[dict[str, Any]] = []
        for batch in batches:
            _release(self.device)  # also frees what an out-of-memory attempt left, once its exception is gone
            try:
                row = self.measure(configuration, batch, build)
            except torch.OutOfMemoryError:
                logger.warning("%s at batch %d ran out of memory", configuration, batch)
                rows.append(_out_of_memory_row(configuration, batch))
                continue
            if rows:
                row["note"] = f"batch {rows[-1]['batch']} ran out of memory"
            logger.info("%s at batch %d: %.2f samples/s", configuration, batch, row["samples_per_s"])
            return [*rows, row]
        return rows


def _out_of_memory_row(configuration: str, batch: int) -> dict[str, Any]:
    """A row with the same keys as a measured one and no figures, so JSON readers see one shape."""
    figures = ("samples_per_s", "step_ms_median", "step_ms_p10", "step_ms_p90", "peak_memory_gib", "memory_kind",
               "flops_per_step", "peak_tflops", "mfu")
    return {"configuration": configuration, "batch": batch, "status": "out of memory", "note": "",
            **dict.fromkeys(figures)}


def measure_bf16_peak(device: torch.device, size: int = 8192, runs: int = 5, matmuls: int = 10) -> float:
    """Dense bf16 matmul FLOP/s that this GPU reaches: the denominator of MFU.

    Measured, not taken from a datasheet, so that MFU says how much of what the card actually delivers at its
    current clocks and power limit a step uses. Returns the median of ``runs`` bursts of ``matmuls`` (size²) products.
    """
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    out = torch.empty_like(a)

    def burst() -> None:
        for _ in range(matmuls):
            torch.matmul(a, b, out=out)

    seconds = np.median(Harness(device, steps=runs, warmup=1).time_steps(burst))
    return 2.0 * size**3 * matmuls / seconds


# --- CLIP training step ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipScale:
    """Sizes of the CLIP stage at one scale.

    ``reference_batches`` are tried in order until one fits: with eager attention the paper's batch 32 keeps
    (B, heads, 2049, 2049) attention matrices of every layer for the backward and does not fit even in 139 GB;
    batch 16 needs about as much as an 80 GB card has, hence batch 8 last.
    """

    vit: ViTConfig
    text: dict[str, int]  # BertConfig sizes; the text encoder is random-initialised in memory, nothing is downloaded
    embed_dim: int
    head_norm: str
    text_length: int
    batch: int
    reference_batches: tuple[int, ...]


CLIP_SCALES = {
    # The clip_pretrain demo (configs/demo.json): 1 + 8·4·4 = 129 image tokens, 96 text tokens.
    "tiny": ClipScale(
        vit=ViTConfig(img_size=(32, 64, 64), patch_size=(4, 16, 16), hidden_size=128, mlp_dim=256, num_layers=4,
                      num_heads=4),
        text={"vocab_size": 2000, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 256},
        embed_dim=128, head_norm="batch", text_length=96, batch=32, reference_batches=(32,),
    ),
    # The paper: ViT-B 3D (2049 tokens of width 768) and BERT-base (BertConfig's defaults) on 512 tokens.
    "paper": ClipScale(
        vit=ViTConfig.paper(), text={}, embed_dim=768, head_norm="none", text_length=512, batch=32,
        reference_batches=(32, 16, 8),
    ),
}

_LEARNING_RATE, _WEIGHT_DECAY = 1e-4, 0.05


def _reference_adamw(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW as the reference code runs it: one kernel launch per tensor per operation."""
    return torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE, weight_decay=_WEIGHT_DECAY, fused=False,
                             foreach=False)


def _project_adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The project's AdamW (``engines.optim.adamw``), fused when the model is on CUDA."""
    return adamw(model, _LEARNING_RATE, _WEIGHT_DECAY)


@dataclass(frozen=True)
class ClipSetup:
    """One CLIP configuration: the attention of both towers and the optimizer."""

    name: str
    attention: str  # "sdpa" or "eager", for the ViT and the text encoder alike
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    compiled: bool = False  # every ViT block and text-encoder layer compiled in place


CLIP_SETUPS = (
    ClipSetup("optimized", "sdpa", _project_adamw),  # first: on CPU, max RSS then belongs to it alone
    ClipSetup("optimized + compiled blocks", "sdpa", _project_adamw, compiled=True),
    ClipSetup("reference", "eager", _reference_adamw),
)


def _clip_model(scale: ClipScale, attention: str) -> M3DCLIP:
    """The project's CLIP model at ``scale``; the same seed for every configuration, so all start from equal weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vision = VisionTransformer3D(replace(scale.vit, attention=attention))
        text = BertModel(BertConfig(**scale.text, attn_implementation=attention))
        return M3DCLIP(vision, text, embed_dim=scale.embed_dim, head_norm=scale.head_norm)


def _clip_inputs(scale: ClipScale, batch: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (B, 1, D, H, W) volumes and (B, T) token ids: the step's cost depends on shapes, not on content."""
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(batch, scale.vit.in_channels, *scale.vit.img_size, generator=generator)
    input_ids = torch.randint(1, vocab_size, (batch, scale.text_length), generator=generator)
    return image, input_ids


def _clip_builder(scale: ClipScale, setup: ClipSetup, device: torch.device) -> Build:
    """A ``Build`` for one CLIP training step (forward, symmetric InfoNCE, backward, AdamW) in ``setup``."""

    def build(batch: int) -> tuple[Step, float]:
        model = compile_blocks(_clip_model(scale, setup.attention).to(device).train(), setup.compiled)
        text_config = model.language_encoder.config
        if text_config._attn_implementation != setup.attention:
            raise RuntimeError(f"text encoder runs {text_config._attn_implementation!r}, not {setup.attention!r}")
        optimizer = setup.optimizer(model)
        image, input_ids = (t.to(device) for t in _clip_inputs(scale, batch, text_config.vocab_size))
        attention_mask = torch.ones_like(input_ids)

        def step() -> None:
            # bf16 autocast on GPU only, as the bundle's trainer does (amp = bf16 and CUDA); fp32 on CPU.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(image, input_ids=input_ids, attention_mask=attention_mask)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, batch * clip_train_flops(model, scale.text_length)

    return build


def clip_stage(scale: str, harness: Harness) -> list[dict[str, Any]]:
    """The M3D-CLIP training step, optimized and reference-style; one row per configuration (and per OOM)."""
    sizes = CLIP_SCALES[scale]
    rows = []
    for setup in harness.setups(CLIP_SETUPS):
        batches = sizes.reference_batches if setup.name == "reference" else (sizes.batch,)
        rows += harness.measure_first_fitting(setup.name, batches, _clip_builder(sizes, setup, harness.device))
    return rows


# --- LaMed generation ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateScale:
    """Sizes of the generation stage: ``answers`` prompts per step, each ``new_tokens`` long (no early EOS)."""

    vit: ViTConfig
    llm: dict[str, Any]  # LlamaConfig sizes; random-initialised in memory, nothing is downloaded
    question_tokens: int
    new_tokens: int
    answers: int


GENERATE_SCALES = {
    # The lamed_instruct demo: 16 image tokens, a 2-layer Llama of width 128.
    "tiny": GenerateScale(
        vit=CLIP_SCALES["tiny"].vit,
        llm={"vocab_size": 2004, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4},
        question_tokens=32, new_tokens=32, answers=32,
    ),
    # The paper's vision side with a Phi-3-mini-sized LLM (3072 wide, 32 layers, 8192 MLP), 256 image tokens.
    "paper": GenerateScale(
        vit=ViTConfig.paper(),
        llm={"vocab_size": 32015, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096},
        question_tokens=64, new_tokens=128, answers=32,
    ),
}


def _lamed_model(scale: GenerateScale, device: torch.device) -> LaMed:
    """The project's LaMed (ViT → perceiver → Llama) at ``scale``, bf16 on GPU, fp32 on CPU, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vision = VisionTransformer3D(scale.vit)
        llm = LlamaForCausalLM(LlamaConfig(**scale.llm, attn_implementation="sdpa"))
        perceiver = SpatialPoolingPerceiver(scale.vit.hidden_size, llm.config.hidden_size, vision.grid_size)
        model = LaMed(vision, perceiver, llm, image_token_id=scale.llm["vocab_size"] - 4)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return model.to(device=device, dtype=dtype).eval()


def generate_stage(scale: str, harness: Harness) -> list[dict[str, Any]]:
    """Answer ``answers`` prompts: one left-padded KV-cached batch ("optimized"; again with a fixed-shape static
    cache, with which transformers compiles the decoding step into a CUDA graph on a GPU) against one prompt at a
    time as the reference benchmark scripts do ("reference"). A "sample" is one answer of ``new_tokens`` tokens."""
    sizes = GENERATE_SCALES[scale]
    device = harness.device
    model = _lamed_model(sizes, device)
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(sizes.answers, 1, *sizes.vit.img_size, generator=generator).to(device, model.llm.dtype)
    lengths = torch.randint(sizes.question_tokens // 2, sizes.question_tokens + 1, (sizes.answers,), generator=generator)
    width = model.num_image_tokens + int(lengths.max())
    prompt_ids = torch.zeros(sizes.answers, width, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    for i, length in enumerate(lengths.tolist()):  # left padding, image placeholders first, then the question
        text = torch.randint(1, sizes.llm["vocab_size"] - 4, (length,), generator=generator)
        row = torch.cat([torch.full((model.num_image_tokens,), model.image_token_id), text])
        prompt_ids[i, width - len(row):] = row
        prompt_mask[i, width - len(row):] = 1
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    flops = 2.0 * linear_weights(model.llm) * (width + sizes.new_tokens) * sizes.answers  # decoding, forward only
    options = {"max_new_tokens": sizes.new_tokens, "min_new_tokens": sizes.new_tokens, "eos_token_id": None}

    def batched(_: int, **cache: str) -> tuple[Step, float]:
        return (lambda: model.generate(images, prompt_ids, prompt_mask, **options, **cache)), flops

    def static(batch: int) -> tuple[Step, float]:
        return batched(batch, cache_implementation="static")

    def one_by_one(_: int) -> tuple[Step, float]:
        def step() -> None:
            for i in range(sizes.answers):
                keep = prompt_mask[i].bool()
                model.generate(images[i : i + 1], prompt_ids[i : i + 1, keep], prompt_mask[i : i + 1, keep], **options)

        return step, flops

    one_batch = f"one batch, {sizes.new_tokens} new tokens each"
    return [
        {**harness.measure("optimized", sizes.answers, batched), "note": one_batch},
        {**harness.measure("optimized + static cache", sizes.answers, static),
         "note": one_batch + (", CUDA graphs" if device.type == "cuda" else "")},
        {**harness.measure("reference", sizes.answers, one_by_one), "note": "one prompt at a time"},
    ]


# --- LaMed stage-2 and lamed_seg training steps ----------------------------------------------------------------------


@dataclass(frozen=True)
class LamedScale:
    """Sizes of the LaMed (stage 2) and lamed_seg training steps: ``tokens`` per sequence, image tokens included."""

    vit: ViTConfig
    llm: dict[str, Any]  # LlamaConfig sizes; random-initialised in memory, nothing is downloaded
    tokens: int
    batch: int
    segmenter: SegmenterConfig


LAMED_SCALES = {
    # The lamed_instruct / lamed_seg demos: 16 image tokens, a 2-layer Llama of width 128, a 2-layer segmenter.
    "tiny": LamedScale(
        vit=CLIP_SCALES["tiny"].vit, llm=GENERATE_SCALES["tiny"].llm, tokens=96, batch=8,
        segmenter=SegmenterConfig(
            vit=ViTConfig(img_size=(32, 64, 64), patch_size=(4, 8, 8), hidden_size=64, mlp_dim=128, num_layers=2,
                          num_heads=4, cls_token=False),
            depth=2, num_heads=4, mlp_dim=128),
    ),
    # The paper: ViT-B 3D, 256 image tokens, a Phi-3-mini-sized LLM, 512 tokens, batch 8; SegVol's module.
    "paper": LamedScale(
        vit=ViTConfig.paper(), llm=GENERATE_SCALES["paper"].llm, tokens=512, batch=8,
        segmenter=SegmenterConfig.paper(),
    ),
}
LAMED_PARTS = ("vision", "perceiver", "embeddings", "lm_head")  # + LoRA r16 on every LLM linear (the paper's stage 2)


@dataclass(frozen=True)
class LamedSetup:
    """One LaMed configuration: attention of the ViT and the LLM, the frozen LLM weights' dtype on GPU, optimizer."""

    name: str
    attention: str
    frozen_dtype: torch.dtype  # on CUDA; CPU runs stay in float32
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    compiled: bool = False  # every ViT block and LLM decoder layer compiled in place


LAMED_SETUPS = (
    LamedSetup("optimized", "sdpa", torch.bfloat16, _project_adamw),
    LamedSetup("optimized + compiled blocks", "sdpa", torch.bfloat16, _project_adamw, compiled=True),
    LamedSetup("reference", "eager", torch.float32, _reference_adamw),
)


def lamed_train_flops(model: LaMed, tokens: int, supervised: int) -> float:
    """Forward + backward FLOPs of one LaMed sequence of ``tokens`` tokens (image tokens included), ``supervised`` of
    whose positions predict a labelled token.

    Frozen LLM weights cost 4 · N · T (forward, and the backward to their input; no weight gradient), trained ones
    (LoRA) 6 · N · T, attention 12 · L · T² · d as in the ViT (the causal half is counted too, as PaLM does). The LM
    head runs on the ``supervised`` positions only (:meth:`LaMed.forward`). The ViT is trained (stage 2) and the
    perceiver is one pass over the pooled tokens.
    """
    head = model.llm.get_output_embeddings()
    frozen = trained = 0
    for module in model.llm.modules():
        if isinstance(module, nn.Linear) and module is not head:
            if module.weight.requires_grad:
                trained += module.weight.numel()
            else:
                frozen += module.weight.numel()
    config = model.llm.config
    attention = 12.0 * config.num_hidden_layers * tokens**2 * config.hidden_size
    head_flops = (6.0 if head.weight.requires_grad else 4.0) * head.weight.numel() * supervised
    llm = 4.0 * frozen * tokens + 6.0 * trained * tokens + head_flops + attention
    return vit_train_flops(model.vision_encoder) + 6.0 * linear_weights(model.perceiver) * model.num_image_tokens + llm


def segmenter_train_flops(model: LaMedSeg) -> float:
    """The segmentation module's share of a lamed_seg step: its ViT (trained) and the decoder's linear layers over
    the image tokens (an estimate: the decoder's few prompt tokens and the upscaling convolutions are left out)."""
    encoder = model.segmenter.image_encoder
    decoder = 6.0 * linear_weights(model.segmenter.mask_decoder) * encoder.config.num_patches
    return vit_train_flops(encoder) + decoder


def _lamed_train_model(scale: LamedScale, setup: LamedSetup, device: torch.device, seg: bool) -> LaMed:
    """The project's LaMed (or LaMedSeg) set up for stage 2 by ``prepare_training``: LoRA r16 on all LLM linears,
    ViT, perceiver, embeddings and LM head trained (plus the segmenter), frozen weights in ``frozen_dtype`` on GPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vision = VisionTransformer3D(replace(scale.vit, attention=setup.attention))
        llm = LlamaForCausalLM(LlamaConfig(**scale.llm, attn_implementation=setup.attention))
        perceiver = SpatialPoolingPerceiver(scale.vit.hidden_size, llm.config.hidden_size, vision.grid_size)
        image_token_id = scale.llm["vocab_size"] - 4
        if seg:
            segmenter = PromptableSegmenter(replace(scale.segmenter,
                                                    vit=replace(scale.segmenter.vit, attention=setup.attention)))
            model = LaMedSeg(vision, perceiver, llm, image_token_id, segmenter, scale.llm["vocab_size"] - 1)
        else:
            model = LaMed(vision, perceiver, llm, image_token_id)
    if device.type == "cuda":
        model.llm.to(setup.frozen_dtype)
    prepare_training(model, (*LAMED_PARTS, *(("segmenter",) if seg else ())), LoRASettings())
    return compile_blocks(model.to(device).train(), setup.compiled)


def _lamed_inputs(model: LaMed, scale: LamedScale, batch: int, seg: bool) -> dict[str, torch.Tensor]:
    """Random volumes and token ids (image placeholders first, ``[SEG]`` near the end when ``seg``), labels on the
    text, and for ``seg`` a random mask per sample: the step's cost depends on shapes, not on content."""
    generator = torch.Generator().manual_seed(3)
    vocab = scale.llm["vocab_size"]
    image = torch.randn(batch, 1, *scale.vit.img_size, generator=generator)
    input_ids = torch.randint(1, vocab - 4, (batch, scale.tokens), generator=generator)
    input_ids[:, : model.num_image_tokens] = model.image_token_id
    if seg:
        input_ids[:, -2] = model.seg_token_id
    labels = input_ids.masked_fill(input_ids == model.image_token_id, -100)
    inputs = {"image": image, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    if seg:
        inputs["seg"] = (torch.rand(batch, 1, *scale.vit.img_size, generator=generator) > 0.7).float()
    return inputs


def _lamed_builder(scale: LamedScale, setup: LamedSetup, device: torch.device, seg: bool) -> Build:
    """A ``Build`` for one stage-2 (``seg``: lamed_seg) training step: forward, loss, backward, AdamW."""

    def build(batch: int) -> tuple[Step, float]:
        model = _lamed_train_model(scale, setup, device, seg)
        optimizer = setup.optimizer(model)
        inputs = {k: v.to(device) for k, v in _lamed_inputs(model, scale, batch, seg).items()}

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(**inputs)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        supervised = scale.tokens - model.num_image_tokens  # _lamed_inputs labels every text token
        flops = lamed_train_flops(model, scale.tokens, supervised) + (segmenter_train_flops(model) if seg else 0.0)
        return step, batch * flops

    return build


def _lamed_rows(scale: str, harness: Harness, seg: bool) -> list[dict[str, Any]]:
    sizes = LAMED_SCALES[scale]
    rows = []
    for setup in harness.setups(LAMED_SETUPS):
        build = _lamed_builder(sizes, setup, harness.device, seg)
        rows += harness.measure_first_fitting(setup.name, (sizes.batch, sizes.batch // 2), build)
    return rows


def lamed_stage(scale: str, harness: Harness) -> list[dict[str, Any]]:
    """The LaMed stage-2 training step (LoRA + ViT + perceiver + embeddings + LM head), optimized and reference."""
    return _lamed_rows(scale, harness, seg=False)


def seg_stage(scale: str, harness: Harness) -> list[dict[str, Any]]:
    """The lamed_seg training step (stage 2 plus the segmentation module, Dice + BCE on every sample's mask)."""
    return _lamed_rows(scale, harness, seg=True)


# --- data loading ---------------------------------------------------------------------------------------------------


LOADER_SHAPES = {"tiny": (32, 64, 64), "paper": (32, 256, 256)}
LOADER_VOLUMES, LOADER_BATCH = 64, 8


def _endless(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def _augmented_on(device: torch.device, batches: Iterator[Any]) -> Step:
    """A loader step that also applies the batch's device-side draws there, as ``PrepareImageTextBatch`` does."""
    def step() -> None:
        batch = next(batches)
        apply_augmentation(batch["image"].to(device), batch[AUGMENTATION_KEY])
    return step


def loader_stage(scale: str, harness: Harness) -> list[dict[str, Any]]:
    """Volumes per second through the training augmentation (``VolumeDataset`` + ``train_transforms``): float32
    ``.npy`` read in the main process as published ("reference"), then float32, float16 and uint8 caches with worker
    processes, and the float16 cache with ``train_transforms(on_device=True)``, whose timed step also moves the batch
    to the benchmark's device and augments it there. The files were just written, so they come from the page cache:
    this is decoding and augmentation, not disk speed. A "sample" is one volume; the per-worker rate is in the note."""
    shape = (1, *LOADER_SHAPES[scale])
    workers = max(1, min(4, (os.cpu_count() or 2) // 2))
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    setups = [
        ("reference", "float32", 0, False),
        *((f"{dtype} cache", dtype, workers, False) for dtype in CACHE_DTYPES),
        ("float16 cache, augmentation on device", "float16", workers, True),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {dtype: [str(save_volume(Path(tmp) / f"{dtype}_{i}.npy", volume, dtype)) for i in range(LOADER_VOLUMES)]
                 for dtype in CACHE_DTYPES}
        for name, dtype, count, on_device in setups:
            dataset = VolumeDataset(paths[dtype], train_transforms(on_device=on_device), image_shape=shape)
            loader = torch.utils.data.DataLoader(dataset, batch_size=LOADER_BATCH, shuffle=True, num_workers=count,
                                                 persistent_workers=count > 0)
            batches = _endless(loader)
            step = _augmented_on(harness.device, batches) if on_device else (lambda: next(batches))
            row = harness.measure(name, LOADER_BATCH, lambda _: (step, 0.0))
            per_worker = row["samples_per_s"] / max(count, 1)
            processes = "main process" if count == 0 else f"{count} worker{'s' * (count > 1)}"
            note = f"{dtype} .npy, {processes}, {per_worker:.1f} volumes/s per process"
            if on_device:
                note += f"; the timed step includes apply_augmentation of the batch on {harness.device.type}"
            row.update(note=note, flops_per_step=None, mfu=None)
            rows.append(row)
    return rows


# Stage name → function(scale, harness) returning its rows; the reference configuration is named "reference".
STAGES: dict[str, Callable[[str, Harness], list[dict[str, Any]]]] = {
    "clip": clip_stage, "lamed": lamed_stage, "seg": seg_stage, "generate": generate_stage, "loader": loader_stage,
}


# --- running and reporting ------------------------------------------------------------------------------------------


def _with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each row's samples/s over that of the stage's reference configuration (the batch that fitted)."""
    reference = next((r for r in rows if r["configuration"] == "reference" and r["status"] == "ok"), None)
    for row in rows:
        ok = reference is not None and row["status"] == "ok"
        row["ratio"] = row["samples_per_s"] / reference["samples_per_s"] if ok else None
    return rows


def run_benchmark(
    stages: Sequence[str], scale: str = "tiny", steps: int = 10, warmup: int = 2, compile_blocks: bool = False
) -> list[dict[str, Any]]:
    """Run ``stages`` at ``scale`` on the GPU when there is one, otherwise on CPU; one dict per table row
    (``compile_blocks``: add the CLIP and LaMed steps with compiled transformer blocks).

    Raises:
        ValueError: for an unknown stage or scale, fewer than one timed step or a negative warm-up.
    """
    unknown = [name for name in stages if name not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected some of {sorted(STAGES)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = measure_bf16_peak(device) if device.type == "cuda" else None
    harness = Harness(device, steps, warmup, peak, compile_blocks)
    rows = []
    for name in stages:
        rows += _with_ratios([{"stage": name, **row} for row in STAGES[name](scale, harness)])
    return rows


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with a line on how memory and MFU were measured."""
    lines = [
        "| stage | configuration | batch | samples/s | step ms, median (p10–p90) | peak memory | MFU | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        configuration = f"{r['configuration']} ({r['note']})" if r["note"] else r["configuration"]
        if r["status"] != "ok":
            lines.append(f"| {r['stage']} | {configuration} | {r['batch']} | {r['status']} | — | — | — | — |")
            continue
        step = f"{r['step_ms_median']:.1f} ({r['step_ms_p10']:.1f}–{r['step_ms_p90']:.1f})"
        memory = f"{r['peak_memory_gib']:.2f} GiB" + (" (max RSS)" if r["memory_kind"] == "process max RSS" else "")
        lines.append(
            f"| {r['stage']} | {configuration} | {r['batch']} | {r['samples_per_s']:.2f} | {step} | {memory} "
            f"| {_fmt(r['mfu'], '.1%')} | {_fmt(r['ratio'], '.2f', '×')} |"
        )
    peak = next((r["peak_tflops"] for r in rows if r["peak_tflops"]), None)
    lines.append("")
    lines.append(
        f"MFU against a measured bf16 matmul peak of {peak:.0f} TFLOP/s." if peak
        else "CPU run: peak memory is the process's max RSS (a high-water mark over all rows so far); no MFU."
    )
    return "\n".join(lines)


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def _report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON record: the rows with what produced them (command, versions, device, date)."""
    return {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "monai": monai.__version__},
        "results": rows,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", choices=sorted(STAGES), default=sorted(STAGES))
    parser.add_argument("--scale", choices=SCALES, default="tiny", help="tiny runs on CPU; paper needs a large GPU")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--json", type=Path, help="also write the figures, versions and device here")
    parser.add_argument("--compile-blocks", action="store_true",
                        help="also time the CLIP and LaMed steps with every transformer block compiled")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = run_benchmark(args.stages, args.scale, args.steps, args.warmup, args.compile_blocks)
    print(markdown_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(_report(rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
