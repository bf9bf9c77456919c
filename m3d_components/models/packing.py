"""Sequence packing: several token sequences per row instead of one padded row each.

Position ids restart at 0 for every sequence (and for the padding that ends a row); given no attention mask,
transformers reads such rows as separate sequences and keeps attention inside each, so a packed batch computes what
the padded one does while skipping the padding. Used for the demo LLM's pre-training and LaMed training batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["is_packed", "pack_order", "packed_rows"]


def pack_order(lengths: Sequence[int], width: int = 0) -> list[list[int]]:
    """Indices of sequences of ``lengths`` packed first-fit, longest first, into rows of ``max(width, longest)``
    tokens; each row lists its sequences in placement order. ``width=0`` never makes a row longer than padding would.
    """
    if not lengths:
        raise ValueError("no sequences to pack")
    width = max(width, *lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def packed_rows(
    sequences: Sequence[Sequence[Sequence[int]]], targets: Sequence[Sequence[Sequence[int]]], pad_id: int,
    width: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, position_ids, labels)``, (R, L) each, of rows made of the given sequences (and their label
    lists, −100 where nothing is learnt), ``L = max(width, longest row)``; padding gets label −100."""
    width = max(width, *(sum(map(len, row)) for row in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    positions = torch.zeros_like(ids)
    for r, (row, row_targets) in enumerate(zip(sequences, targets)):
        start = 0
        for sequence, target in zip(row, row_targets):
            end = start + len(sequence)
            ids[r, start:end] = torch.tensor(sequence, dtype=torch.long)
            labels[r, start:end] = torch.tensor(target, dtype=torch.long)
            positions[r, start:end] = torch.arange(len(sequence))
            start = end
        positions[r, start:] = torch.arange(width - start)
    return ids, positions, labels


def is_packed(attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None) -> bool:
    """Whether a batch is packed rows: position ids given without an attention mask (what :func:`packed_rows` makes)."""
    return attention_mask is None and position_ids is not None
