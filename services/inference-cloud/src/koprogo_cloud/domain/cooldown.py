"""Cooldown: after N consecutive failures a deployment rests, so the router stops sending it work.

A success resets the count. When the rest is over the next call is a probe: one more
failure (the count is still at N) starts another rest at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass
class Cooldown:
    threshold: int
    duration_s: float
    consecutive_failures: int = 0
    until: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.until is not None and now < self.until

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.until = None

    def record_failure(self, now: datetime) -> bool:
        """Count a failure; True when it starts a cooldown."""
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.threshold and not self.active(now):
            self.until = now + timedelta(seconds=self.duration_s)
            return True
        return False
