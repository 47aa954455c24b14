"""Contents encryption: AES-256-GCM values bound to their row, keyrings that rotate, keys files."""

from __future__ import annotations

import base64
import stat
import uuid
from pathlib import Path

import pytest

from koprogo_cli.secrets import content_keys_path, ensure_content_keyring
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared.content_crypto import (
    ContentDecryptionError,
    InvalidKeyringError,
    Keyring,
    MissingContentKeyError,
    UnknownKeyIdError,
    add_key_to_file,
    create_keys_file,
    decrypt_request_messages,
    decrypt_response_content,
    encrypt_request_messages,
    encrypt_response_content,
    load_keyring,
    row_aad,
)
from tests.conftest import make_content_keys


def keyring(*key_ids: str) -> Keyring:
    env = make_content_keys(*key_ids)
    return Keyring.parse(env["CONTENT_KEYS"], env["CONTENT_KEY_ID"])


def test_a_value_round_trips_and_each_seal_uses_a_fresh_nonce() -> None:
    ring = keyring("k1")
    aad = row_aad("mcp_responses", "content", uuid.uuid4())
    first = ring.encrypt(b"Le 12 juin a 18 h.", aad)
    second = ring.encrypt(b"Le 12 juin a 18 h.", aad)
    assert first[0] == second[0] == "k1"
    assert first[1] != second[1], "same plaintext, same key: the nonces must differ"
    assert b"12 juin" not in first[1]
    assert ring.decrypt(*first, aad) == b"Le 12 juin a 18 h."


def test_a_ciphertext_moved_to_another_row_or_column_does_not_open() -> None:
    ring = keyring("k1")
    row, other = uuid.uuid4(), uuid.uuid4()
    key_id, blob = encrypt_response_content(ring, row, "secret answer")
    with pytest.raises(ContentDecryptionError):
        decrypt_response_content(ring, key_id, blob, other)
    with pytest.raises(ContentDecryptionError):
        ring.decrypt(key_id, blob, row_aad("mcp_requests", "messages", row))
    assert decrypt_response_content(ring, key_id, blob, row) == "secret answer"


def test_a_tampered_value_or_another_key_does_not_open() -> None:
    ring = keyring("k1")
    aad = row_aad("mcp_requests", "messages", uuid.uuid4())
    key_id, blob = ring.encrypt(b"hello", aad)
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ContentDecryptionError):
        ring.decrypt(key_id, flipped, aad)
    impostor = Keyring("k1", {"k1": bytes(32)})
    with pytest.raises(ContentDecryptionError):
        impostor.decrypt(key_id, blob, aad)
    with pytest.raises(ContentDecryptionError):
        ring.decrypt(key_id, b"\x02" + blob[1:], aad)


def test_messages_round_trip_as_json() -> None:
    ring = keyring("k1")
    request_id = uuid.uuid4()
    messages = [{"role": "user", "content": "Quand a lieu l'AG ? €"}]
    key_id, blob = encrypt_request_messages(ring, request_id, messages)
    assert decrypt_request_messages(ring, key_id, blob, request_id) == messages


def test_after_rotation_new_values_use_the_new_key_and_old_ones_still_open() -> None:
    old = keyring("k1")
    aad = row_aad("mcp_responses", "content", uuid.uuid4())
    sealed_before = old.encrypt(b"before", aad)
    rotated = Keyring("k2", {**old.keys, "k2": bytes(range(32))})
    sealed_after = rotated.encrypt(b"after", aad)
    assert sealed_after[0] == "k2"
    assert rotated.decrypt(*sealed_before, aad) == b"before"
    with pytest.raises(UnknownKeyIdError, match="k2"):
        old.decrypt(*sealed_after, aad)


def test_parsing_takes_the_last_key_as_current_unless_named() -> None:
    a, b = (base64.b64encode(bytes([i]) * 32).decode() for i in (1, 2))
    assert Keyring.parse(f"old:{a},new:{b}").current_key_id == "new"
    assert Keyring.parse(f"old:{a}\n# comment\nnew:{b}  # trailing\n", "old").current_key_id == "old"


@pytest.mark.parametrize(
    ("spec", "current", "error", "says"),
    [
        ("", None, MissingContentKeyError, "no content key"),
        ("k1", None, InvalidKeyringError, "key_id:base64key"),
        ("k1:not base64!", None, InvalidKeyringError, "not valid base64"),
        (f"k1:{base64.b64encode(bytes(16)).decode()}", None, InvalidKeyringError, "16 bytes"),
        (f"k1:{base64.b64encode(bytes(32)).decode()}", "k9", InvalidKeyringError, "'k9' is not in"),
        (f"k 1:{base64.b64encode(bytes(32)).decode()}", None, InvalidKeyringError, "key id"),
        ("k1:{0},k1:{0}".format(base64.b64encode(bytes(32)).decode()), None, InvalidKeyringError, "twice"),
    ],
)
def test_a_malformed_keyring_is_refused_with_the_reason(
    spec: str, current: str | None, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        Keyring.parse(spec, current)


def test_keys_never_show_in_reprs_or_settings() -> None:
    env = make_content_keys("k1")
    secret = env["CONTENT_KEYS"].split(":", 1)[1]
    ring = Keyring.parse(env["CONTENT_KEYS"])
    settings = LedgerSettings(database_url="postgresql://x/y", content_keys=env["CONTENT_KEYS"])
    assert secret not in repr(ring)
    assert secret not in repr(settings) and secret not in str(settings.model_dump())


def test_no_key_configured_says_what_to_set() -> None:
    with pytest.raises(MissingContentKeyError, match="CONTENT_KEYS_FILE"):
        LedgerSettings(database_url="postgresql://x/y", content_keys="").content_keyring()
    with pytest.raises(InvalidKeyringError, match="both set"):
        load_keyring("k1:x", None, Path("/nonexistent"))
    with pytest.raises(MissingContentKeyError, match="cannot be read"):
        load_keyring(None, None, Path("/nonexistent/content-keys"))


def test_a_keys_file_is_created_private_once_and_rotation_appends_the_new_current_key(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "content-keys"
    first = create_keys_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with pytest.raises(FileExistsError):
        create_keys_file(path)
    second = add_key_to_file(path)
    ring = load_keyring(None, None, path)
    assert set(ring.keys) == {first, second}
    assert ring.current_key_id == second
    assert load_keyring(None, first, path).current_key_id == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["content-keys"], "no staging file left behind"


def test_koprogo_up_s_keyring_is_made_once_and_the_operator_s_own_wins(tmp_path: Path) -> None:
    env = ensure_content_keyring(tmp_path, environ={})
    assert env == {"CONTENT_KEYS_FILE": str(content_keys_path(tmp_path))}
    text = content_keys_path(tmp_path).read_text()
    assert ensure_content_keyring(tmp_path, environ={}) == env
    assert content_keys_path(tmp_path).read_text() == text, "an existing keys file is never rewritten"
    settings = LedgerSettings(database_url="postgresql://x/y", content_keys_file=env["CONTENT_KEYS_FILE"])
    assert len(settings.content_keyring().keys) == 1
    assert ensure_content_keyring(tmp_path / "other", environ={"CONTENT_KEYS": "k1:..."}) == {}
    assert not content_keys_path(tmp_path / "other").exists()
