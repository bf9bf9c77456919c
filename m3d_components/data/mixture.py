"""A multi-task mixture with chosen shares, instead of a plain concatenation weighted by dataset size.

The published stage-2 mixture concatenates datasets, so the task mix follows their sizes (hundreds of thousands of
VQA rows drown a few thousand grounding samples). :class:`TaskMixture` draws each epoch's samples from the member
datasets in set proportions. The draw is a seeded function of the epoch, so every DDP rank builds the same index
table and a ``DistributedSampler`` over the mixture shards it correctly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["TaskMixture", "evaluation_suite"]


class TaskMixture(torch.utils.data.Dataset):
    """Sample ``num_samples`` items per epoch from named datasets with shares ``weights``.

    Args:
        datasets: name → dataset (e.g. ``{"caption": …, "vqa_closed": …, "rec": …}``).
        weights: name → relative share, for every dataset; None gives shares proportional to dataset size (the
            published behaviour). A zero weight drops that dataset.
        num_samples: epoch length; default the total size of the weighted datasets.
        seed: base seed of the per-epoch draw (call :meth:`set_epoch` each epoch).

    Within a dataset, items are taken from a fresh permutation (cycled when its share exceeds its size), so each
    item is drawn once before any is drawn twice.
    """

    def __init__(
        self,
        datasets: Mapping[str, torch.utils.data.Dataset],
        weights: Mapping[str, float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        if weights is not None:
            named = set(weights)
            if named != set(datasets):
                raise ValueError(
                    f"weights must name every dataset: missing {sorted(set(datasets) - named)}, "
                    f"unknown {sorted(named - set(datasets))}"
                )
            if any(float(w) < 0 for w in weights.values()):
                raise ValueError(f"weights must be >= 0, got {dict(weights)}")
        raw = {
            name: float(weights[name]) if weights is not None else float(len(ds))
            for name, ds in datasets.items() if len(ds) > 0
        }
        raw = {name: value for name, value in raw.items() if value > 0}
        if not raw:
            raise ValueError("the mixture has no non-empty dataset with a non-zero weight")
        self.datasets = {name: datasets[name] for name in raw}
        total = sum(raw.values())
        self.shares = {name: value / total for name, value in raw.items()}
        sizes = {name: len(ds) for name, ds in self.datasets.items()}
        self.num_samples = int(num_samples) if num_samples is not None else sum(sizes.values())
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        self.names = list(self.datasets)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Redraw the (dataset, index) table for ``epoch``; the same epoch gives the same table everywhere."""
        rng = np.random.default_rng([self.seed, epoch])
        counts = rng.multinomial(self.num_samples, [self.shares[n] for n in self.names])
        table = []
        for which, (name, count) in enumerate(zip(self.names, counts)):
            size = len(self.datasets[name])
            reps = -(-int(count) // size)
            order = np.concatenate([rng.permutation(size) for _ in range(max(reps, 1))])[:count]
            table.append(np.stack([np.full(count, which), order], axis=1))
        table = np.concatenate(table)
        self.table = table[rng.permutation(len(table))]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        which, item = self.table[index]
        return self.datasets[self.names[which]][int(item)]


def evaluation_suite(
    datasets: Mapping[str, torch.utils.data.Dataset], max_per_task: int | Mapping[str, int | None] | None = None,
    seed: int = 0,
) -> torch.utils.data.ConcatDataset:
    """The member datasets one after another, each cut to a seeded random ``max_per_task`` items (None keeps all;
    a mapping sets the limit per task, e.g. every closed-VQA row but 100 reports).

    Keeping tasks contiguous keeps generation batches single-task, so a batch of short answers does not wait for
    a report-length one.
    """
    parts = []
    for name, dataset in datasets.items():
        size = len(dataset)
        limit = max_per_task.get(name) if isinstance(max_per_task, Mapping) else max_per_task
        if limit is not None and size > limit:
            picks = np.sort(np.random.default_rng([seed, len(parts)]).choice(size, limit, replace=False))
            dataset = torch.utils.data.Subset(dataset, picks.tolist())
        parts.append(dataset)
    if not parts:
        raise ValueError("the evaluation suite has no dataset")
    return torch.utils.data.ConcatDataset(parts)
