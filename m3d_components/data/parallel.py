"""Process-parallel map for the dataset preparation tools.

Workers are *spawned* (not forked) so that a parent that already ran torch's thread pools cannot deadlock them, and
each worker runs torch single-threaded so that ``workers`` processes use about ``workers`` cores.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import torch

__all__ = ["map_tasks"]

T = TypeVar("T")
R = TypeVar("R")


def _single_threaded() -> None:
    torch.set_num_threads(1)


def map_tasks(fn: Callable[[T], R], tasks: Iterable[T], workers: int = 1) -> list[R]:
    """``[fn(t) for t in tasks]``, in order, on ``workers`` processes (in this process when ``workers`` is 1).

    Args:
        fn: a module-level function (it is pickled by name); it should return errors as values, not raise.
        tasks: picklable arguments.
        workers: number of processes, at least 1.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    tasks = list(tasks)
    if workers == 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_single_threaded) as pool:
        return list(pool.map(fn, tasks, chunksize=max(1, len(tasks) // (8 * workers))))
