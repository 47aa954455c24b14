"""Message and response contents encrypted at rest: AES-256-GCM under a keyring that can rotate.

Each stored value is `0x01 || nonce (12 bytes, fresh per value) || ciphertext || tag`, and
the row keeps the id of the key that sealed it. The associated data names the table, the
column and the row id, so a ciphertext copied onto another row does not decrypt. The
ledger writes with the keyring's current key; a reader (the ledger's backfill and
rotation, the gateway's GDPR export) opens a value with whichever key its row names.

Keys are configured as `key_id:base64(32 bytes)` entries, comma- or newline-separated
(`CONTENT_KEYS`) or one a line in a file (`CONTENT_KEYS_FILE`, `#` comments allowed).
The current key is `CONTENT_KEY_ID` when given, otherwise the last entry: rotating is
appending a key (`add_key_to_file`).

    ContentCryptoError
    ├── ContentKeyError
    │   ├── MissingContentKeyError    no key is configured
    │   ├── InvalidKeyringError       the configuration cannot be read as a keyring
    │   └── UnknownKeyIdError         a row names a key the keyring does not hold
    └── ContentDecryptionError        wrong key, tampered value, or a value moved to another row

Messages name key ids and row ids, never keys or contents.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, GCM's native nonce size
FORMAT_V1 = b"\x01"
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ContentCryptoError(Exception):
    """Base of the contents encryption errors."""


class ContentKeyError(ContentCryptoError):
    """The keys are missing, malformed, or lack the one a row needs."""


class MissingContentKeyError(ContentKeyError):
    """No content key is configured."""


class InvalidKeyringError(ContentKeyError):
    """The configured keys cannot be read as a keyring."""


class UnknownKeyIdError(ContentKeyError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"content key {key_id!r} is not in the keyring (was an old key removed?)")
        self.key_id = key_id


class ContentDecryptionError(ContentCryptoError):
    """The value does not open: another key, a tampered value, or a value from another row."""


@dataclass(frozen=True)
class Keyring:
    """Content keys by id, and which one seals new values."""

    current_key_id: str
    keys: Mapping[str, bytes] = field(repr=False)
    _ciphers: dict[str, AESGCM] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise MissingContentKeyError("the keyring holds no key")
        for key_id, key in self.keys.items():
            if not KEY_ID.match(key_id):
                raise InvalidKeyringError(f"content key id {key_id!r} is not 1-64 of [A-Za-z0-9_.-]")
            if len(key) != KEY_BYTES:
                raise InvalidKeyringError(f"content key {key_id!r} is {len(key)} bytes, not {KEY_BYTES}")
        if self.current_key_id not in self.keys:
            raise InvalidKeyringError(
                f"the current content key {self.current_key_id!r} is not in the keyring"
            )
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))  # the caller's dict may change
        object.__setattr__(self, "_ciphers", {kid: AESGCM(key) for kid, key in self.keys.items()})

    @classmethod
    def parse(cls, text: str, current_key_id: str | None = None) -> Keyring:
        """A keyring from `kid:base64key` entries (comma- or newline-separated); the last is current by default."""
        keys: dict[str, bytes] = {}
        for line in text.splitlines():
            for entry in line.split("#", 1)[0].split(","):
                if entry := entry.strip():
                    key_id, key = _parse_entry(entry)
                    if key_id in keys:
                        raise InvalidKeyringError(f"content key id {key_id!r} is listed twice")
                    keys[key_id] = key
        if not keys:
            raise MissingContentKeyError("no content key in the configured keys")
        return cls(current_key_id or list(keys)[-1], keys)

    def encrypt(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        """Seal under the current key with a fresh nonce: `(key_id, blob)`."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.current_key_id].encrypt(nonce, plaintext, aad)
        return self.current_key_id, FORMAT_V1 + nonce + sealed

    def decrypt(self, key_id: str, blob: bytes, aad: bytes) -> bytes:
        """Open a blob sealed under `key_id` for the same associated data."""
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownKeyIdError(key_id)
        if blob[:1] != FORMAT_V1 or len(blob) < 1 + NONCE_BYTES + 16:
            raise ContentDecryptionError("not a KoproGo content ciphertext (unknown format)")
        try:
            return cipher.decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], aad)
        except InvalidTag:
            raise ContentDecryptionError(
                f"the value does not open under key {key_id!r} for this row"
            ) from None


def _parse_entry(entry: str) -> tuple[str, bytes]:
    key_id, sep, encoded = entry.partition(":")
    key_id = key_id.strip()
    if not sep or not key_id:
        raise InvalidKeyringError("a content key entry is not `key_id:base64key`")
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKeyringError(f"content key {key_id!r} is not valid base64") from None
    return key_id, key


# What the ledger stores, and how a reader opens it: one place, so both sides agree.


def row_aad(table: str, column: str, row_id: uuid.UUID) -> bytes:
    """The associated data binding a ciphertext to its table, column and row."""
    return f"koprogo/v1/{table}.{column}/{row_id}".encode()


def encrypt_request_messages(keyring: Keyring, request_id: uuid.UUID, messages: Any) -> tuple[str, bytes]:
    """`mcp_requests.messages_ciphertext`: the JSON of the messages, sealed for this request."""
    plaintext = json.dumps(messages, ensure_ascii=False, separators=(",", ":")).encode()
    return keyring.encrypt(plaintext, row_aad("mcp_requests", "messages", request_id))


def decrypt_request_messages(keyring: Keyring, key_id: str, blob: bytes, request_id: uuid.UUID) -> Any:
    """The messages (a JSON value, normally a list of `{role, content}`) of one request row."""
    return json.loads(keyring.decrypt(key_id, blob, row_aad("mcp_requests", "messages", request_id)))


def encrypt_response_content(keyring: Keyring, response_id: uuid.UUID, content: str) -> tuple[str, bytes]:
    """`mcp_responses.content_ciphertext`: the answer's text, sealed for this response."""
    return keyring.encrypt(content.encode(), row_aad("mcp_responses", "content", response_id))


def decrypt_response_content(keyring: Keyring, key_id: str, blob: bytes, response_id: uuid.UUID) -> str:
    """The answer's text of one response row."""
    return keyring.decrypt(key_id, blob, row_aad("mcp_responses", "content", response_id)).decode()


# Keys files: what `koprogo up` creates once and what rotation appends to.

KEYS_FILE_HEADER = """\
# KoproGo content keys: one `key_id:base64(32 bytes)` a line; the last line is the current key
# unless CONTENT_KEY_ID names another. Never delete a line while rows (or backups) may still be
# sealed under it. Back this file up with the database, apart from it: without it the stored
# message contents cannot be read, and with it anyone holding a copy of the database can.
"""


def new_key_entry() -> tuple[str, str]:
    """A fresh random key and its id: `(key_id, "key_id:base64key")`."""
    key_id = f"k{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}"
    return key_id, f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def create_keys_file(path: Path) -> str:
    """Create a keys file (mode 0600, its folder 0700) holding one fresh key; return its id.

    Raises `FileExistsError` when the file exists: a keys file is never overwritten.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_id, entry = new_key_entry()
    # Written aside, then linked in place: a reader never sees a half-written file, and of
    # two processes creating it at once exactly one wins (link refuses an existing name).
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    _write(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), KEYS_FILE_HEADER + entry + "\n")
    try:
        os.link(staging, path)
    finally:
        staging.unlink()
    return key_id


def add_key_to_file(path: Path) -> str:
    """Append a fresh key (the new current one) to a keys file, creating it if need be; return its id."""
    try:
        return create_keys_file(path)
    except FileExistsError:
        pass
    Keyring.parse(path.read_text(encoding="utf-8"))  # refuse to append to something that is not a keyring
    key_id, entry = new_key_entry()
    _write(os.open(path, os.O_WRONLY | os.O_APPEND), entry + "\n")
    return key_id


def _write(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def load_keyring(keys: str | None, current_key_id: str | None, keys_file: Path | None) -> Keyring:
    """The keyring from `CONTENT_KEYS` or `CONTENT_KEYS_FILE` (exactly one), `CONTENT_KEY_ID` choosing the current key."""
    if keys and keys_file:
        raise InvalidKeyringError("CONTENT_KEYS and CONTENT_KEYS_FILE are both set: use one")
    if keys_file:
        try:
            text = keys_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise MissingContentKeyError(
                f"CONTENT_KEYS_FILE {keys_file} cannot be read ({type(exc).__name__})"
            ) from None
        return Keyring.parse(text, current_key_id or None)
    if keys:
        return Keyring.parse(keys, current_key_id or None)
    raise MissingContentKeyError(
        "no content encryption key: set CONTENT_KEYS_FILE to a keys file (`koprogo up` makes one in"
        " <data dir>/secrets/content-keys) or CONTENT_KEYS to `key_id:base64(32 bytes)`"
        " (e.g. `k1:$(head -c32 /dev/urandom | base64)`)"
    )
