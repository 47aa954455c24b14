"""Energy meters: a smart plug's cumulative Wh counter in a file, and a fake for unit tests.

`ENERGY_METER_FILE` names a file whose content is the counter in Wh, a decimal number alone
(`1234.567`, a trailing newline allowed): whatever exporter polls the plug (Shelly, Tasmota,
a Home Assistant automation...) rewrites it. The node reads it before and after each attempt.
A plug's resolution (often 1 Wh, or 0.01 kWh) is coarse for a task of seconds on a Pi: such an
attempt may read 0 Wh, and the scheduler's plausibility check (energy below idle) flags it.
Write the counter with the finest resolution the plug gives.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from pathlib import Path

from koprogo_node.service_layer.energy import EnergyMeter, EnergyUse, MeterReadError, metered_use

log = logging.getLogger(__name__)

# A counter file is a number, not a document: more than this is not one.
MAX_COUNTER_BYTES = 256


def read_counter(path: Path) -> float:
    """The Wh counter `path` holds; MeterReadError naming the file when it holds none."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_COUNTER_BYTES + 1)
    except OSError as exc:
        raise MeterReadError(f"cannot read the energy meter file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_COUNTER_BYTES:
        raise MeterReadError(
            f"the energy meter file {path} is not a counter (over {MAX_COUNTER_BYTES} bytes)"
        )
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        value = float(text)
    except ValueError:
        raise MeterReadError(
            f"the energy meter file {path} must hold a cumulative Wh counter (a number), not {text[:40]!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise MeterReadError(f"the energy meter file {path} holds {value}, not a counter (>= 0)")
    return value


class MeterFile(EnergyMeter):
    """A cumulative Wh counter in a file, read before and after the attempt.

    When it cannot be read (or went backwards) the attempt attests the declared power x its
    seconds instead, and says so (`measured_by` "declared"); the failure is logged.
    """

    def __init__(self, path: Path, power_watts: float) -> None:
        self.path = path
        self.power_watts = power_watts

    async def _read(self) -> float | None:
        try:
            return await asyncio.to_thread(read_counter, self.path)
        except MeterReadError as exc:
            log.warning("%s; this attempt attests its declared power", exc)
            return None

    async def start(self) -> float | None:
        return await self._read()

    async def used(self, mark: float | None, seconds: float) -> EnergyUse:
        after = await self._read() if mark is not None else None
        return metered_use(mark, after, seconds, self.power_watts)


class FakeEnergyMeter(EnergyMeter):
    """Counter readings given in advance (None: unreadable), consumed one per read."""

    def __init__(self, readings: Iterable[float | None], power_watts: float = 7.0) -> None:
        self._readings = list(readings)
        self.power_watts = power_watts
        self.reads = 0

    def _next(self) -> float | None:
        self.reads += 1
        return self._readings.pop(0) if self._readings else None

    async def start(self) -> float | None:
        return self._next()

    async def used(self, mark: float | None, seconds: float) -> EnergyUse:
        after = self._next() if mark is not None else None
        return metered_use(mark, after, seconds, self.power_watts)
