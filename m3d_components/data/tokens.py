"""Special tokens shared by the data layer (prompts, boxes) and the models (LLM vocabulary).

``<im_patch>`` marks where image features go, ``<bx_start>``/``<bx_end>`` wrap a box, ``[SEG]`` asks for a mask. The
first three are added as *special* tokens and ``[SEG]`` as a normal added token, as in the released M3D-LaMed
tokenizers, so ``skip_special_tokens=True`` removes the image and box markers but keeps ``[SEG]``.
"""

from __future__ import annotations

__all__ = ["IMAGE_TOKEN", "BOX_START", "BOX_END", "SEG_TOKEN", "SPECIAL_TOKENS", "ALL_NEW_TOKENS"]

IMAGE_TOKEN = "<im_patch>"
BOX_START = "<bx_start>"
BOX_END = "<bx_end>"
SEG_TOKEN = "[SEG]"

SPECIAL_TOKENS = (IMAGE_TOKEN, BOX_START, BOX_END)
ALL_NEW_TOKENS = (*SPECIAL_TOKENS, SEG_TOKEN)
