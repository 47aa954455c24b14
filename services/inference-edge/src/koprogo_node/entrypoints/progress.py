"""A download progress bar on stderr: redrawn in place on a terminal, a line per 10 % otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from koprogo_node.domain.model_catalogue import human_bytes

WIDTH = 30
REDRAW_S = 0.2


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._total: int | None = None
        self._started = time.monotonic()
        self._first = 0
        self._last_draw = 0.0
        self._last_decile = -1

    def start(self, total: int | None, resumed_from: int) -> None:
        self._total, self._first, self._started = total, resumed_from, time.monotonic()
        size = human_bytes(total) if total is not None else "unknown size"
        resumed = f", resuming at {human_bytes(resumed_from)}" if resumed_from else ""
        self._stream.write(f"pulling {self._label} ({size}{resumed})\n")
        self._stream.flush()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self._tty:
            if now - self._last_draw >= REDRAW_S or done == self._total:
                self._last_draw = now
                self._stream.write("\r" + self._line(done, now))
                self._stream.flush()
        elif self._total:
            decile = done * 10 // self._total
            if decile != self._last_decile:
                self._last_decile = decile
                self._stream.write(self._line(done, now) + "\n")
                self._stream.flush()

    def finish(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _line(self, done: int, now: float) -> str:
        elapsed = max(now - self._started, 1e-6)
        rate = f"{human_bytes((done - self._first) / elapsed)}/s"
        if not self._total:
            return f"{human_bytes(done)} {rate}"
        filled = WIDTH * done // self._total
        pct = 100 * done // self._total
        bar = "#" * filled + "-" * (WIDTH - filled)
        return f"[{bar}] {pct:3d}% {human_bytes(done)}/{human_bytes(self._total)} {rate}"
