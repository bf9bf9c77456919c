"""What every reader shares: resolving paths under ``data_root``, and one policy for invalid records.

A reader turns an index file (JSON split, CSV) into a list of plain dict records and reports each bad record to an
``on_error`` callback: by default the error is raised, with ``skip_invalid`` it is counted and logged
(:class:`~m3d_components.data.errors.SkipLog`), and ``m3d validate-data`` collects them to print.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from m3d_components.data.errors import DataError, SkipLog

__all__ = ["ErrorHandler", "error_handler", "raise_error", "resolve_path"]

ErrorHandler = Callable[[DataError], None]


def raise_error(error: DataError) -> None:
    """The default policy: a bad record stops the run, with its file and row in the message."""
    raise error


def error_handler(name: str, skip_invalid: bool, on_error: ErrorHandler | None = None) -> tuple[ErrorHandler, SkipLog]:
    """Pick the policy for a reader: an explicit ``on_error``, else skip-and-count or raise."""
    log = SkipLog(name)
    if on_error is not None:
        return on_error, log
    return (log.skip if skip_invalid else raise_error), log


def resolve_path(
    value: object, data_root: str | os.PathLike | Sequence[str | os.PathLike] | None, source: str, row: int | str,
    column: str, check: bool,
) -> Path:
    """Turn a path cell into an absolute :class:`Path` under ``data_root`` (absolute paths are kept).

    ``data_root`` may list several folders, tried in order (a layout whose paths may start from either); the first
    that holds the file wins, and without ``check`` the first is used.

    Raises:
        DataError: an empty cell, or (with ``check``) a file that does not exist under any root.
    """
    if not isinstance(value, str) or not value.strip():
        raise DataError(source, f"'{column}' is empty", row)
    path = Path(value.strip())
    roots = [] if data_root is None else [data_root] if isinstance(data_root, (str, os.PathLike)) else list(data_root)
    candidates = [path] if path.is_absolute() or not roots else [Path(root) / path for root in roots]
    found = next((c for c in candidates if c.is_file()), None) if check else candidates[0]
    if found is None:
        searched = " or ".join(repr(str(r)) for r in roots)
        where = f" under data_root {searched}" if roots and not path.is_absolute() else ""
        raise DataError(source, f"{column} {value!r} not found{where}", row)
    return found
