"""Where a KoproGo service writes when nothing else is said, read from its own settings classes
with the environment a deployment gives it: the tests of deploy/compose and deploy/k8s check
that each such path is on something that service's user may write (a volume, not the image)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from unittest import mock


@contextmanager
def only_environment(env: Mapping[str, str]) -> Iterator[None]:
    """The settings classes read os.environ: give them the deployment's, nothing of this process'."""
    with mock.patch.dict(os.environ, dict(env), clear=True):
        yield


def written_paths(command: list[str], env: Mapping[str, str]) -> dict[str, Path]:
    """What the service started by `command` writes by default -> where, with `env` set.

    HOME (libraries' caches) for every service; the edge node's models folder, its answers record
    and, without a NATS key, its minted grid key; the ledger's and the grid scheduler's signing seed
    when they would mint it."""
    program = Path(command[0]).name
    home = env.get("HOME")
    assert home, f"{program}: no HOME, and the image has none for the deployment's user"
    found = {"HOME": Path(home)}
    with only_environment(env):
        if program == "koprogo-node":
            from koprogo_node.settings import NodeSettings

            node = NodeSettings()
            found["models folder (KOPROGO_MODELS_DIR)"] = node.models_dir.expanduser()
            found["answers record (ANSWERS_DIR)"] = node.answers_directory()
            if node.nats_nkey_seed_file is None:
                found["grid key"] = node.grid_seed_file()
        elif program == "koprogo-ledger":
            from koprogo_ledger.settings import LedgerSettings

            # The database's URL is required but irrelevant here (on k8s it comes from a Secret).
            with only_environment({"DATABASE_URL": "postgresql://unused/koprogo", **env}):
                seed, minted = LedgerSettings().signing_seed_file()
            if minted:
                found["ledger signing seed"] = seed
        elif program == "koprogo-grid-scheduler":
            from koprogo_grid.settings import DEFAULT_SIGNING_SEED, SchedulerSettings

            scheduler = SchedulerSettings()
            if scheduler.grid_signing_seed_file is None and scheduler.nats_nkey_seed_file is None:
                found["grid signing seed"] = Path(env.get("TMPDIR", "/tmp")) / DEFAULT_SIGNING_SEED.name
    return found


def under(path: Path, folder: str) -> bool:
    return path == Path(folder) or Path(folder) in path.parents
