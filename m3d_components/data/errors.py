"""Errors and skip accounting for bad input.

Every reader raises :class:`DataError` at the boundary, with the file (and row, when there is one) in the message, so
a user never has to decode a traceback from deep inside numpy or MONAI. Where a reader offers ``skip_invalid``, the
same errors are counted and logged by :class:`SkipLog` instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["DataError", "SkipLog"]

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A problem with an input file or record.

    Args:
        source: the file (or file + key, e.g. ``"M3D_Cap.json['train'][41]"``) the problem was found in.
        problem: what is wrong, with the offending value.
        row: the row (CSV, 0-based data row) or list index, when the problem belongs to one record.
    """

    def __init__(self, source: str, problem: str, row: int | str | None = None) -> None:
        self.source = str(source)
        self.problem = problem
        self.row = row
        where = self.source if row is None else f"{self.source}, row {row}"
        super().__init__(f"{where}: {problem}")


@dataclass
class SkipLog:
    """Counts records skipped under ``skip_invalid`` and logs each one once.

    ``reasons`` maps the problem text to how often it occurred, so a summary can say what was dropped.
    """

    name: str
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)

    def skip(self, error: DataError) -> None:
        self.skipped += 1
        self.reasons[error.problem] += 1
        logger.warning("%s: skipped invalid record (%d so far): %s", self.name, self.skipped, error)

    def log_summary(self) -> None:
        """Log the totals once a reader is done (silent when nothing was skipped)."""
        if self.skipped:
            logger.warning(self.summary())

    def summary(self) -> str:
        return f"{self.name}: {self.skipped} invalid record(s) skipped" + (
            f" ({dict(self.reasons.most_common(5))})" if self.skipped else ""
        )
