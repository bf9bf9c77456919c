"""What a run shows and leaves behind: a progress bar with the loss, and metrics as JSON with our canonical keys."""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

__all__ = ["LossProgressBar", "MetricsWriter"]


class LossProgressBar(ProgressBar):
    """Ignite's tqdm progress bar showing the running iteration loss; attachable from a config handler list
    (MONAI calls ``attach(engine)`` with no other arguments)."""

    def attach(self, engine: Engine, *args, **kwargs) -> None:
        super().attach(engine, output_transform=lambda output: {"loss": float(output["loss"])})


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
