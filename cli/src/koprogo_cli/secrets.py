"""Secrets `koprogo up` keeps in the data folder for the services it starts.

`<data dir>/secrets/` (mode 0700) holds `content-keys` (mode 0600): the AES-256 keys that
seal message contents in PostgreSQL. It is created once, with one random key, and never
rewritten: losing it makes every stored content unreadable, so back it up (apart from the
database). Rotation appends to it (`koprogo-ledger add-key`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from koprogo_shared.content_crypto import Keyring, create_keys_file, load_keyring

CONTENT_KEYS_ENV = ("CONTENT_KEYS", "CONTENT_KEYS_FILE")


def content_keys_path(data_dir: Path) -> Path:
    return data_dir / "secrets" / "content-keys"


def ensure_content_keyring(data_dir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment giving the ledger and the gateway their content keys.

    The operator's own (`CONTENT_KEYS` or `CONTENT_KEYS_FILE` already set) wins and nothing
    is added; otherwise `{"CONTENT_KEYS_FILE": <data dir>/secrets/content-keys}`, the file
    created with a fresh 256-bit key the first time. Raises `ContentKeyError` if an existing
    file is not a readable keyring (it is never overwritten).
    """
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in CONTENT_KEYS_ENV):
        return {}
    path = content_keys_path(data_dir)
    try:
        create_keys_file(path)
    except FileExistsError:
        pass  # made by an earlier run (or by another `koprogo up` a moment ago)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    load_keyring(None, None, path)  # fail here, with the reason, rather than in the ledger's log
    return {"CONTENT_KEYS_FILE": str(path)}


def add_reading_key(keys_file: Path, other_keys_file: Path) -> None:
    """Give `keys_file` the keys of `other_keys_file` it lacks, before its own lines, so that its
    current key (the last line) stays current: a hub's keyring gets a building's key, with which
    its ledger opens what the building's gateway sealed. Rewritten whole, then renamed (0600)."""
    own = keys_file.read_text(encoding="utf-8")
    Keyring.parse(own)  # refuse to touch something that is not a keyring
    own_ids = {line.split(":", 1)[0] for line in own.splitlines() if line and not line.startswith("#")}
    added = [
        line
        for line in other_keys_file.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#") and line.split(":", 1)[0] not in own_ids
    ]
    if not added:
        return
    lines = own.splitlines()
    first_key = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    text = "\n".join([*lines[:first_key], *added, *lines[first_key:]]) + "\n"
    staging = keys_file.with_name(f".{keys_file.name}.new")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    staging.replace(keys_file)
