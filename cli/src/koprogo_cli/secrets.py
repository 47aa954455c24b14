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

from koprogo_shared.content_crypto import create_keys_file, load_keyring

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
