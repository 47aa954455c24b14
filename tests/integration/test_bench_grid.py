"""bench/grid.py still runs against the grid as it is: its pure-board part and its part on a real
nats-server and scheduler process, at a few tasks (it rotted once, unnoticed, when the board's API
and the scheduler's trust rules moved under it). Rates are not checked here: bench/README.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

_BENCH = Path(__file__).resolve().parents[2] / "bench"


def _grid_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_grid", _BENCH / "grid.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_pure_board_part_runs() -> None:
    rows = _grid_bench().bench_board(200, 10)
    assert len(rows) == 4 and all(rate > 0 for _, rate in rows)


async def test_the_scheduler_part_dispatches_and_completes_tasks_end_to_end(tmp_path: Path) -> None:
    out = await _grid_bench().bench_nats(tmp_path, 20, 3)
    assert out["intake"] > 0 and out["dispatch"] > 0 and out["e2e"] > 0
