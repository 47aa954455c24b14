"""Ed25519 signatures on the grid: the scheduler signs assignments, nodes sign their reports.

Keys are NATS user nkeys, the seed files `koprogo up`, `koprogo nats-node-key` and `koprogo node
join` mint for each node and service (so a node's grid identity is its NATS identity); a node
without one (a stack run without NATS keys) makes its own seed once (`load_or_create_signer`).
Public keys are nkey strings (`U...`), which the node roster records per node.

What is signed is canonical JSON (`canonical_json`: sorted keys, no spaces, UTF-8), so a payload
signs the same on every machine; digests are sha256 in hex; signatures base64url without padding.

    assignment payload  = the TaskAssignment's fields but `signature`            (scheduler key)
    report payload      = task id, attempt, node, assignment digest, outcome, result digest,
                          error, usage, attestation, signer                      (node key)

A report is believed only when it is signed by the key the roster (or the node's first heartbeat,
without a roster) holds for its node, names the digest of the assignment that node was given for
that attempt, and its result hashes to its `result_digest` (`report_refusal`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
import nkeys

from koprogo_shared.task_events import TaskAssignment, TaskResultReported

_PREFIX_USER = nkeys.PREFIX_BYTE_USER


class SignatureError(Exception):
    """A key or signature that cannot be read."""


def canonical_json(value: Any) -> bytes:
    """`value` as canonical JSON bytes (sorted keys, compact, UTF-8; datetimes as ISO strings)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def digest(value: Any) -> str:
    """sha256 (hex) of `value`'s canonical JSON."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_bytes(public_key: str) -> bytes:
    """The 32 raw bytes of a user nkey (`U...`); SignatureError when it is not one (CRC included)."""
    try:
        raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    except (binascii.Error, ValueError):
        raise SignatureError(f"{public_key[:12]!r}... is not an nkey") from None
    if len(raw) != 35 or raw[0] != _PREFIX_USER:
        raise SignatureError(f"{public_key[:12]!r}... is not a user nkey")
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if nkeys.crc16(body) != crc:
        raise SignatureError(f"{public_key[:12]!r}... has a bad checksum")
    return body[1:]


class Signer:
    """An Ed25519 signing key held from an nkey seed."""

    def __init__(self, seed: bytes) -> None:
        try:
            pair = nkeys.from_seed(bytearray(seed.strip()))
            self.public_key: str = pair.public_key.decode()
            raw = nkeys.decode_seed(bytearray(seed.strip()))[1]
        except (nkeys.NkeysError, ValueError, TypeError):
            raise SignatureError("not an nkey seed") from None
        if not self.public_key.startswith("U"):
            raise SignatureError("grid signatures use user nkeys (U...)")
        self._key = nacl.signing.SigningKey(bytes(raw))

    @classmethod
    def from_seed_file(cls, path: Path) -> Signer:
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise SignatureError(f"cannot read the seed {path}: {exc.strerror}") from None

    def sign(self, payload: Any) -> str:
        return _b64(self._key.sign(canonical_json(payload)).signature)


def load_or_create_signer(seed_file: Path) -> Signer:
    """The signer of `seed_file`, minting a new user seed there first (mode 0600) when there is none."""
    if not seed_file.exists():
        seed_file.parent.mkdir(parents=True, exist_ok=True)
        seed = nkeys.encode_seed(secrets.token_bytes(32), _PREFIX_USER)
        fd = os.open(seed_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(seed + b"\n")
    return Signer.from_seed_file(seed_file)


def verify(public_key: str, payload: Any, signature: str) -> bool:
    """Whether `signature` is `public_key`'s signature of `payload` (False for any malformed part)."""
    try:
        key = nacl.signing.VerifyKey(public_key_bytes(public_key))
        key.verify(canonical_json(payload), _unb64(signature))
    except (
        SignatureError,
        nacl.exceptions.BadSignatureError,
        nacl.exceptions.ValueError,
        ValueError,
        TypeError,
    ):
        return False
    return True


# ----- assignments ------------------------------------------------------------------------------


def input_digest(task_type: str, parameters: Mapping[str, Any], document_sha256: str | None) -> str:
    """What a task asks: its type, its parameters and its document's sha256."""
    return digest({"task_type": task_type, "parameters": dict(parameters), "document": document_sha256})


def assignment_payload(assignment: TaskAssignment) -> dict[str, Any]:
    return assignment.model_dump(mode="json", exclude={"signature"})


def assignment_digest(assignment: TaskAssignment) -> str:
    return digest(assignment_payload(assignment))


def sign_assignment(signer: Signer, assignment: TaskAssignment, node_id: str) -> TaskAssignment:
    """`assignment` for `node_id`, with its input digest and the scheduler's signature."""
    a = assignment
    unsigned = a.model_copy(
        update={
            "node_id": node_id,
            "input_digest": input_digest(
                a.task_type, a.parameters, a.document.sha256 if a.document else None
            ),
            "signer": signer.public_key,
            "signature": None,
        }
    )
    return unsigned.model_copy(update={"signature": signer.sign(assignment_payload(unsigned))})


def assignment_refusal(assignment: TaskAssignment, node_id: str, scheduler_key: str | None) -> str | None:
    """Why a node must not run `assignment`, or None when it may.

    `scheduler_key`: the scheduler's public key the node was told (`GRID_SCHEDULER_PUBLIC_KEY`);
    None trusts the key the assignment names (a stack without keys), still checking the rest.
    """
    a = assignment
    if a.signature is None or a.signer is None:
        return "unsigned_assignment"
    if scheduler_key is not None and a.signer != scheduler_key:
        return "assignment_not_from_the_scheduler"
    if a.node_id != node_id:
        return "assignment_for_another_node"
    expected = input_digest(a.task_type, a.parameters, a.document.sha256 if a.document else None)
    if a.input_digest != expected:
        return "input_digest_mismatch"
    if not verify(a.signer, assignment_payload(a), a.signature):
        return "bad_assignment_signature"
    return None


# ----- reports ----------------------------------------------------------------------------------


def result_digest(result: Mapping[str, Any] | None) -> str | None:
    return None if result is None else digest(dict(result))


def report_payload(report: TaskResultReported) -> dict[str, Any]:
    r = report
    return {
        "task_id": r.task_id,
        "attempt": r.attempt,
        "node_id": r.node_id,
        "assignment_digest": r.assignment_digest,
        "outcome": r.outcome,
        "result_digest": r.result_digest,
        "error": r.error,
        "usage": r.usage.model_dump(mode="json"),
        "attestation": None if r.attestation is None else r.attestation.model_dump(mode="json"),
        "signer": r.signer,
    }


def sign_report(signer: Signer, report: TaskResultReported, assignment: TaskAssignment) -> TaskResultReported:
    """`report` bound to `assignment` (its digest) and to its result (its digest), signed by the node."""
    unsigned = report.model_copy(
        update={
            "assignment_digest": assignment_digest(assignment),
            "result_digest": result_digest(report.result),
            "signer": signer.public_key,
            "signature": None,
        }
    )
    return unsigned.model_copy(update={"signature": signer.sign(report_payload(unsigned))})


def report_refusal(
    report: TaskResultReported, node_key: str | None, expected_assignment_digest: str
) -> str | None:
    """Why the scheduler must refuse `report`, or None when it is the node's own word on that work.

    `node_key`: the public key the node is known by (None: unknown, refused);
    `expected_assignment_digest`: the digest of the assignment given to this node for this attempt.
    """
    r = report
    if r.signature is None or r.signer is None:
        return "unsigned_report"
    if node_key is None:
        return "unknown_node_key"
    if r.signer != node_key:
        return "signed_by_another_key"
    if not verify(node_key, report_payload(r), r.signature):
        return "bad_report_signature"
    if r.assignment_digest != expected_assignment_digest:
        return "not_the_assignment_given"
    if r.result_digest != result_digest(r.result):
        return "result_altered"
    return None
