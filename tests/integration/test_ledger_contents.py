"""Contents at rest: what the ledger writes to PostgreSQL cannot be read without the keys."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from koprogo_ledger.adapters.migrations import apply_migrations, load_migrations
from koprogo_ledger.bootstrap import run_ledger
from koprogo_shared.content_crypto import (
    ContentDecryptionError,
    Keyring,
    MissingContentKeyError,
    create_keys_file,
    decrypt_request_messages,
    decrypt_response_content,
    load_keyring,
)
from koprogo_shared.events import ChatCompleted, ChatMessage, ChatRequested
from tests.conftest import TEST_CONTENT_KEYS, make_content_keys, wait_until
from tests.integration.ledger_support import (
    chat_completed,
    chat_requested,
    dump_of_contents_tables,
    ledger_settings,
    metric,
    readable_in,
    running_ledger,
)

pytestmark = pytest.mark.integration

LEDGER_SCRIPT = Path(sys.executable).parent / "koprogo-ledger"


def secret_chat(tag: str, *, at: datetime | None = None) -> tuple[ChatRequested, ChatCompleted, str, str]:
    """A request and its answer whose texts appear nowhere else: `(request, completion, question, answer)`."""
    question = f"Le digicode du hall {tag} est 4471-B, qui le connait ?"
    answer = f"Seul le syndic {tag} connait le digicode."
    request = chat_requested(at=at or datetime.now(UTC)).model_copy(
        update={
            "messages": [
                ChatMessage(role="system", content="Tu es poli."),
                ChatMessage(role="user", content=question),
            ]
        }
    )
    return request, chat_completed(request).model_copy(update={"content": answer}), question, answer


def run_keyring() -> Keyring:
    return Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])


async def contents_of(db: asyncpg.Pool, keyring: Keyring, request: ChatRequested) -> tuple[object, str]:
    """The request's messages and its answer, decrypted as the GDPR export will."""
    req = await db.fetchrow(
        "SELECT id, messages_ciphertext, key_id FROM mcp_requests WHERE id = $1", uuid.UUID(request.id)
    )
    resp = await db.fetchrow(
        "SELECT id, content_ciphertext, key_id FROM mcp_responses WHERE request_id = $1",
        uuid.UUID(request.id),
    )
    messages = decrypt_request_messages(keyring, req["key_id"], req["messages_ciphertext"], req["id"])
    return messages, decrypt_response_content(keyring, resp["key_id"], resp["content_ciphertext"], resp["id"])


async def test_the_database_holds_no_readable_content_and_the_keyring_reads_it_back(
    database_url: str, clean_jetstream: str
) -> None:
    chats = [secret_chat(f"T{i}") for i in range(3)]
    async with running_ledger(database_url, clean_jetstream) as ledger:
        for request, completed, _, _ in chats:
            await ledger.publish(request)
            await ledger.publish(completed)
        await wait_until(lambda: ledger.applied(*(e.id for c in chats for e in c[:2])))
        dump = await dump_of_contents_tables(ledger.db)
        seed_columns = await ledger.db.fetch(
            "SELECT q.messages, r.content, q.key_id AS q_key, r.key_id AS r_key"
            " FROM mcp_requests q JOIN mcp_responses r ON r.request_id = q.id"
        )
        read_back = [await contents_of(ledger.db, run_keyring(), c[0]) for c in chats]

    assert dump.count("\n") == 2 * len(chats) - 1, "the dump holds every request and response"
    for _, _, question, answer in chats:
        for text in (question, answer, "4471-B", "digicode", "Tu es poli"):
            assert not readable_in(dump, text), text
    assert {(json.dumps(r["messages"]), r["content"]) for r in seed_columns} == {("[]", "")}
    assert {(r["q_key"], r["r_key"]) for r in seed_columns} == {("test-key-1", "test-key-1")}
    for (_, _, question, answer), (messages, content) in zip(chats, read_back, strict=True):
        assert messages == [
            {"role": "system", "content": "Tu es poli."},
            {"role": "user", "content": question},
        ]
        assert content == answer


async def test_a_ciphertext_copied_onto_another_row_does_not_decrypt(
    database_url: str, clean_jetstream: str
) -> None:
    (first, first_done, _, first_answer), (second, second_done, _, _) = secret_chat("A"), secret_chat("B")
    async with running_ledger(database_url, clean_jetstream) as ledger:
        for event in (first, first_done, second, second_done):
            await ledger.publish(event)
        await wait_until(lambda: ledger.applied(first_done.id, second_done.id))
        # Someone with write access to the database moves A's answer and messages onto B's rows.
        await ledger.db.execute(
            "UPDATE mcp_responses AS b SET content_ciphertext = a.content_ciphertext, key_id = a.key_id"
            " FROM mcp_responses AS a WHERE a.id = $1 AND b.id = $2",
            uuid.UUID(first_done.id),
            uuid.UUID(second_done.id),
        )
        await ledger.db.execute(
            "UPDATE mcp_requests AS b SET messages_ciphertext = a.messages_ciphertext, key_id = a.key_id"
            " FROM mcp_requests AS a WHERE a.id = $1 AND b.id = $2",
            uuid.UUID(first.id),
            uuid.UUID(second.id),
        )
        with pytest.raises(ContentDecryptionError):
            await contents_of(ledger.db, run_keyring(), second)
        row = await ledger.db.fetchrow(
            "SELECT id, content_ciphertext, key_id FROM mcp_responses WHERE id = $1",
            uuid.UUID(second_done.id),
        )
        with pytest.raises(ContentDecryptionError):
            decrypt_response_content(run_keyring(), row["key_id"], row["content_ciphertext"], row["id"])
        assert (await contents_of(ledger.db, run_keyring(), first))[1] == first_answer


async def _script(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(LEDGER_SCRIPT), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _env_without_keys(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTENT_KEY")}
    return {**env, **extra}


async def test_keys_rotate_old_rows_stay_readable_new_rows_use_the_new_key_and_rotate_keys_reseals(
    database_url: str, clean_jetstream: str, tmp_path: Path
) -> None:
    keys_file = tmp_path / "secrets" / "content-keys"
    first_key = create_keys_file(keys_file)
    before, before_done, _, before_answer = secret_chat("before")
    after, after_done, _, after_answer = secret_chat("after")
    settings = {"content_keys": None, "content_key_id": None, "content_keys_file": keys_file}
    async with running_ledger(database_url, clean_jetstream, **settings) as ledger:
        await ledger.publish(before)
        await ledger.publish(before_done)
        await wait_until(lambda: ledger.applied(before_done.id))

    code, out = await _script("add-key", "--keys-file", str(keys_file), env=_env_without_keys())
    assert code == 0, out
    second_key = load_keyring(None, None, keys_file).current_key_id
    assert second_key != first_key and second_key in out

    async with running_ledger(database_url, clean_jetstream, **settings) as ledger:  # restarted: new key
        await ledger.publish(after)
        await ledger.publish(after_done)
        await wait_until(lambda: ledger.applied(after_done.id))
        keys = {r["id"]: r["key_id"] for r in await ledger.db.fetch("SELECT id, key_id FROM mcp_responses")}
        assert keys == {uuid.UUID(before_done.id): first_key, uuid.UUID(after_done.id): second_key}
        both = load_keyring(None, None, keys_file)
        assert (await contents_of(ledger.db, both, before))[1] == before_answer
        assert (await contents_of(ledger.db, both, after))[1] == after_answer

        env = _env_without_keys(
            DATABASE_URL=database_url, CONTENT_KEYS_FILE=str(keys_file), CONTENTS_BATCH="1"
        )
        code, out = await _script("rotate-keys", env=env)
        assert code == 0, out
        key_ids = await ledger.db.fetch(
            "SELECT key_id FROM mcp_requests UNION ALL SELECT key_id FROM mcp_responses"
        )
        assert {r["key_id"] for r in key_ids} == {second_key}
        only_new = Keyring(second_key, {second_key: both.keys[second_key]})
        assert (await contents_of(ledger.db, only_new, before))[1] == before_answer
        assert not readable_in(await dump_of_contents_tables(ledger.db), before_answer)


async def test_the_ledger_refuses_to_start_without_a_content_key(
    database_url: str, clean_jetstream: str
) -> None:
    settings = ledger_settings(database_url, clean_jetstream, content_keys=None, content_keys_file=None)
    with pytest.raises(MissingContentKeyError, match="CONTENT_KEYS_FILE"):
        await run_ledger(settings, asyncio.Event())
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('mcp_requests')") is None, "it touched nothing first"
    finally:
        await conn.close()

    env = _env_without_keys(DATABASE_URL=database_url, NATS_URL=clean_jetstream, OPS_PORT="0")
    code, out = await _script(env=env)
    assert code == 1
    assert "koprogo-ledger: no content encryption key: set CONTENT_KEYS_FILE" in out
    assert "Traceback" not in out


async def test_contents_stored_in_plaintext_before_the_upgrade_are_encrypted_at_start(
    database_url: str, clean_jetstream: str
) -> None:
    conn = await asyncpg.connect(database_url)
    legacy = []
    try:
        await apply_migrations(conn, load_migrations()[:2])  # the schema before encryption at rest
        for i in range(5):
            request_id, response_id = uuid.uuid4(), uuid.uuid4()
            question, answer = f"Ancien secret {i}: le code est 99{i}", f"Ancienne reponse {i} confidentielle"
            age = timedelta(days=40 if i == 0 else 1)  # the first is past retention as well
            await conn.execute(
                "INSERT INTO mcp_requests (id, model, messages, created_at) VALUES ($1, 'llama3:8b', $2::jsonb,"
                " now() - $3::interval)",
                request_id,
                json.dumps([{"role": "user", "content": question}]),
                age,
            )
            await conn.execute(
                "INSERT INTO mcp_responses (id, request_id, model, content, finish_reason, prompt_tokens,"
                " completion_tokens, total_tokens, execution_info, execution_type, latency_ms, co2_grams,"
                " co2_saved_grams, created_at) VALUES ($1, $2, 'llama3:8b', $3, 'stop', 1, 2, 3,"
                " '{\"execution_type\": \"edge\"}', 'edge', 10, 0.1, 0.2, now() - $4::interval)",
                response_id,
                request_id,
                answer,
                age,
            )
            legacy.append((request_id, question, answer))
    finally:
        await conn.close()
    sealed_before = metric("koprogo_ledger_plaintext_rows_sealed_total", table="mcp_responses")

    async def no_plaintext_left(db: asyncpg.Pool) -> bool:
        return not await db.fetchval(
            "SELECT count(*) FROM mcp_requests WHERE key_id IS NULL AND contents_purged_at IS NULL"
        ) and not await db.fetchval(
            "SELECT count(*) FROM mcp_responses WHERE key_id IS NULL AND contents_purged_at IS NULL"
        )

    async with running_ledger(database_url, clean_jetstream, contents_batch=2) as ledger:
        await wait_until(lambda: no_plaintext_left(ledger.db), timeout=20)
        await wait_until(
            lambda: (
                metric("koprogo_ledger_content_maintenance_runs_total", outcome="done") > 0
                and metric("koprogo_ledger_plaintext_rows_sealed_total", table="mcp_responses")
                >= sealed_before + 5
            )
        )
        dump = await dump_of_contents_tables(ledger.db)
        purged = await ledger.db.fetchval(
            "SELECT count(*) FROM mcp_responses WHERE contents_purged_at IS NOT NULL AND content_ciphertext IS NULL"
        )
        read_back = []
        for request_id, _, _ in legacy[1:]:
            row = await ledger.db.fetchrow(
                "SELECT q.id, q.messages_ciphertext, q.key_id, r.id AS rid, r.content_ciphertext, r.key_id AS rkey"
                " FROM mcp_requests q JOIN mcp_responses r ON r.request_id = q.id WHERE q.id = $1",
                request_id,
            )
            read_back.append(
                (
                    decrypt_request_messages(
                        run_keyring(), row["key_id"], row["messages_ciphertext"], row["id"]
                    ),
                    decrypt_response_content(
                        run_keyring(), row["rkey"], row["content_ciphertext"], row["rid"]
                    ),
                )
            )
    for _, question, answer in legacy:
        assert not readable_in(dump, question) and not readable_in(dump, answer)
    assert purged == 1, "the row past retention was purged, not kept encrypted"
    assert read_back == [([{"role": "user", "content": q}], a) for _, q, a in legacy[1:]]


async def test_another_keyring_cannot_read_what_the_ledger_wrote(
    database_url: str, clean_jetstream: str
) -> None:
    request, completed, _, _ = secret_chat("other")
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await ledger.publish(request)
        await ledger.publish(completed)
        await wait_until(lambda: ledger.applied(completed.id))
        impostor = Keyring.parse(make_content_keys("test-key-1")["CONTENT_KEYS"])
        with pytest.raises(ContentDecryptionError):
            await contents_of(ledger.db, impostor, request)
