"""Fold LoRA into the LLM and write a plain Hugging Face folder plus LaMed's vision side.

The merged folder loads with ``AutoModelForCausalLM.from_pretrained`` alone (no peft, no code from this package);
``lamed_vision.safetensors`` holds the vision encoder and perceiver under their LaMed names, so the bundle's
inference config rebuilds the whole model with ``llm_path`` = the folder and ``weights`` = that file, LoRA off.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch
from peft import PeftModel

from m3d_components.engines.checkpoint import save_safetensors

__all__ = ["VISION_WEIGHTS", "merge_lora"]

logger = logging.getLogger(__name__)

VISION_WEIGHTS = "lamed_vision.safetensors"


@torch.no_grad()
def merge_lora(network: torch.nn.Module, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir``: the LLM with LoRA merged (``save_pretrained``), the tokenizer, the vision side and
    ``lamed.json`` (ViT and perceiver settings, number of image tokens).

    ``network.llm`` is replaced by the merged model (the same function, without adapters).
    """
    model = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    llm = model.llm
    if isinstance(llm, PeftModel):
        llm = llm.merge_and_unload()
        model.llm = llm
    llm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    vision = {f"vision_encoder.{k}": v for k, v in model.vision_encoder.state_dict().items()}
    vision.update({f"perceiver.{k}": v for k, v in model.perceiver.state_dict().items()})
    save_safetensors(vision, out_dir / VISION_WEIGHTS)
    perceiver = model.perceiver
    info = {
        "num_image_tokens": model.num_image_tokens,
        "vit": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model.vision_encoder.config).items()},
        "perceiver": {"grid": list(perceiver.grid), "pooling": perceiver.pooling, "pooling_size": perceiver.pooling_size},
    }
    (out_dir / "lamed.json").write_text(json.dumps(info, indent=2))
    logger.info("merged LaMed written to %s", out_dir)
    return out_dir
