"""map_tasks: order and argument checks (the process pool itself runs in the slow prepare_cap test)."""

from __future__ import annotations

import pytest

from m3d_components.data.parallel import map_tasks


def test_in_process_map_keeps_order():
    assert map_tasks(abs, [-3, 1, -2], workers=1) == [3, 1, 2]


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        map_tasks(abs, [1], workers=0)
