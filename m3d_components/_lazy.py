"""Packages whose submodules load on first use.

``import m3d_components.engines as me`` (as every bundle config does) and then ``me.tracking`` imports MLflow only
when a config reaches it, so the benchmark, a CLI command or a test loads the libraries it needs and no others —
the GPU machines used for benchmarks have PyTorch and transformers but not MLflow, for instance.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType


def lazy_submodules(
    package: str, names: Sequence[str]
) -> tuple[Callable[[str], ModuleType], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package`` that import its submodules ``names`` on first
    access (importing sets them as attributes, so each import happens once)."""

    def __getattr__(name: str) -> ModuleType:
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
