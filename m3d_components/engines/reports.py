"""Writing an engine's metrics to a JSON file with our canonical keys (``itr/ir_r1@100`` …)."""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

from ignite.engine import Engine, Events

__all__ = ["MetricsWriter"]


class MetricsWriter:
    """At the end of a run, write the engine's numeric metrics (and optional fixed fields) to ``path`` atomically.

    Args:
        path: output JSON file.
        extra: constant fields to include (e.g. the split and the weights evaluated).
    """

    def __init__(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        self.path = Path(path)
        self.extra = dict(extra or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = {
            k: float(v)
            for k, v in sorted(engine.state.metrics.items())
            if isinstance(v, numbers.Number) and not isinstance(v, bool)
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({**self.extra, "metrics": metrics}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
