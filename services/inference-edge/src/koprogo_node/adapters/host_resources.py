"""The host's free disk and RAM, behind a port so tests can state them without faking a pull."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

MEMINFO = Path("/proc/meminfo")


class HostResources(ABC):
    """What the host can give a model: disk under a folder, RAM now."""

    @abstractmethod
    def free_disk_bytes(self, folder: Path) -> int: ...

    @abstractmethod
    def available_ram_bytes(self) -> int | None:
        """RAM available to a new process, or None where the host does not say (not Linux)."""


class LocalHostResources(HostResources):
    """`shutil.disk_usage` and `/proc/meminfo` (MemAvailable, else MemTotal)."""

    def __init__(self, meminfo: Path = MEMINFO) -> None:
        self._meminfo = meminfo

    def free_disk_bytes(self, folder: Path) -> int:
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        return shutil.disk_usage(existing).free

    def available_ram_bytes(self) -> int | None:
        try:
            text = self._meminfo.read_text()
        except OSError:
            return None
        return parse_meminfo(text)


def parse_meminfo(text: str) -> int | None:
    """Bytes from `/proc/meminfo`: MemAvailable (what a new process can get), else MemTotal."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return fields.get("MemAvailable", fields.get("MemTotal"))


@dataclass
class FakeHostResources(HostResources):
    """A host with the disk and RAM a test says."""

    free_disk: int
    ram: int | None

    def free_disk_bytes(self, folder: Path) -> int:
        return self.free_disk

    def available_ram_bytes(self) -> int | None:
        return self.ram
