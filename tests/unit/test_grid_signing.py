"""grid_signing: assignments signed by the scheduler, reports by their node, and every refusal reason.

Real Ed25519 keys (NATS user nkeys minted here), no fake: what is checked is the cryptography.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nkeys
import pytest

from koprogo_shared import grid_signing as g
from koprogo_shared.task_events import (
    DocumentRef,
    EnergyAttestation,
    TaskAssignment,
    TaskResultReported,
    TaskUsage,
)


def _seed() -> bytes:
    return nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)


SCHEDULER = g.Signer(_seed())
NODE = g.Signer(_seed())
OTHER = g.Signer(_seed())

DOC = DocumentRef(object_name="doc-1", sha256="a" * 64, size=12, content_type="text/plain")


def _assignment(task_id: str = "t1", attempt: int = 1, node_id: str = "node-a") -> TaskAssignment:
    unsigned = TaskAssignment(
        task_id=task_id,
        copro_id="c1",
        task_type="summarize_meeting",
        attempt=attempt,
        parameters={"language": "fr"},
        document=DOC,
        deadline=datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
    )
    return g.sign_assignment(SCHEDULER, unsigned, node_id)


def _report(
    task_id: str = "t1", attempt: int = 1, result: dict[str, object] | None = None
) -> TaskResultReported:
    return TaskResultReported(
        source="test/node-a",
        copro_id="c1",
        task_id=task_id,
        attempt=attempt,
        node_id="node-a",
        outcome="completed",
        result={"summary": "Les comptes sont approuvés.", "amounts": [{"value": 18450.0}]}
        if result is None
        else result,
        usage=TaskUsage(prompt_tokens=300, completion_tokens=40, duration_s=2.5),
        attestation=EnergyAttestation(
            source="grid",
            wh=4.9,
            measured_by="declared",
            duration_s=2.5,
            power_watts=7.0,
            intensity_g_per_kwh=150.0,
            device_class="pi5",
        ),
    )


# ----- keys and raw signatures -----------------------------------------------------------------


def test_a_signature_verifies_with_its_key_only() -> None:
    payload = {"b": [1, 2], "a": "été"}
    signature = NODE.sign(payload)
    assert g.verify(NODE.public_key, payload, signature)
    # Key order does not matter: the payload is canonical JSON.
    assert g.verify(NODE.public_key, {"a": "été", "b": [1, 2]}, signature)
    assert not g.verify(OTHER.public_key, payload, signature)
    assert not g.verify(NODE.public_key, {**payload, "b": [1, 3]}, signature)


@pytest.mark.parametrize(
    "signature",
    ["", "not base64 at all!!", "AAAA", "A" * 86],  # empty, not base64, too short, 64 zero-ish bytes
)
def test_bad_signature_text_is_false_not_an_error(signature: str) -> None:
    assert g.verify(NODE.public_key, {"x": 1}, signature) is False


def test_malformed_public_keys_are_refused() -> None:
    payload = {"x": 1}
    signature = NODE.sign(payload)
    key = NODE.public_key
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")  # the CRC no longer matches
    account = nkeys.from_seed(
        bytearray(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT))
    )
    for bad in (flipped, "U" + key[2:], "not-a-key", "", account.public_key.decode()):
        assert g.verify(bad, payload, signature) is False
        with pytest.raises(g.SignatureError):
            g.public_key_bytes(bad)
    assert len(g.public_key_bytes(key)) == 32


def test_the_signer_is_the_nkey_seed_s_user_key(tmp_path: Path) -> None:
    seed = _seed()
    path = tmp_path / "node.nk"
    path.write_bytes(seed + b"\n")
    signer = g.Signer.from_seed_file(path)
    assert signer.public_key == nkeys.from_seed(bytearray(seed)).public_key.decode()
    assert signer.public_key.startswith("U")
    with pytest.raises(g.SignatureError):
        g.Signer(b"SUnotaseed")
    with pytest.raises(g.SignatureError):
        g.Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT))
    with pytest.raises(g.SignatureError, match="cannot read"):
        g.Signer.from_seed_file(tmp_path / "missing.nk")


def test_load_or_create_signer_mints_once_and_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "grid-node.nk"
    first = g.load_or_create_signer(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = g.load_or_create_signer(path)
    assert again.public_key == first.public_key
    payload = {"task": "t1"}
    assert g.verify(first.public_key, payload, again.sign(payload))


# ----- assignments -----------------------------------------------------------------------------


def test_a_signed_assignment_is_accepted_by_its_node() -> None:
    a = _assignment()
    assert a.node_id == "node-a" and a.signer == SCHEDULER.public_key and a.signature
    assert a.input_digest == g.input_digest("summarize_meeting", {"language": "fr"}, DOC.sha256)
    assert g.assignment_refusal(a, "node-a", SCHEDULER.public_key) is None
    assert g.assignment_refusal(a, "node-a", None) is None


def test_assignment_refusals_name_their_reason() -> None:
    a = _assignment()
    unsigned = a.model_copy(update={"signature": None})
    assert g.assignment_refusal(unsigned, "node-a", None) == "unsigned_assignment"
    assert g.assignment_refusal(a, "node-a", OTHER.public_key) == "assignment_not_from_the_scheduler"
    assert g.assignment_refusal(a, "node-b", SCHEDULER.public_key) == "assignment_for_another_node"
    # Parameters changed in transit: the digest no longer covers them.
    tampered = a.model_copy(update={"parameters": {"language": "nl"}})
    assert g.assignment_refusal(tampered, "node-a", SCHEDULER.public_key) == "input_digest_mismatch"
    # Another document under the same digest claim.
    other_doc = a.model_copy(update={"document": DOC.model_copy(update={"sha256": "b" * 64})})
    assert g.assignment_refusal(other_doc, "node-a", SCHEDULER.public_key) == "input_digest_mismatch"
    # A field the digest does not cover, but the signature does: the deadline pushed back.
    later = a.model_copy(update={"deadline": a.deadline + timedelta(hours=1)})
    assert g.assignment_refusal(later, "node-a", SCHEDULER.public_key) == "bad_assignment_signature"
    # Re-signed by someone else who claims to be the scheduler.
    forged = a.model_copy(update={"signature": OTHER.sign(g.assignment_payload(a))})
    assert g.assignment_refusal(forged, "node-a", SCHEDULER.public_key) == "bad_assignment_signature"
    # A whole assignment minted by another key: refused when the node knows the scheduler's key.
    minted = g.sign_assignment(OTHER, a.model_copy(update={"signature": None}), "node-a")
    assert g.assignment_refusal(minted, "node-a", SCHEDULER.public_key) == "assignment_not_from_the_scheduler"
    assert g.assignment_refusal(a.model_copy(update={"signature": "garbage"}), "node-a", None) == (
        "bad_assignment_signature"
    )


def test_an_assignment_without_document_signs_and_verifies() -> None:
    unsigned = TaskAssignment(
        task_id="t2",
        copro_id=None,
        task_type="predict_expenses",
        attempt=2,
        parameters={"history": [1, 2]},
        document=None,
        deadline=datetime(2026, 1, 1, tzinfo=UTC),
    )
    a = g.sign_assignment(SCHEDULER, unsigned, "node-a")
    assert a.input_digest == g.input_digest("predict_expenses", {"history": [1, 2]}, None)
    assert g.assignment_refusal(a, "node-a", SCHEDULER.public_key) is None


# ----- reports ---------------------------------------------------------------------------------


def test_a_signed_report_round_trips_through_json() -> None:
    a = _assignment()
    signed = g.sign_report(NODE, _report(), a)
    assert signed.signer == NODE.public_key
    assert signed.assignment_digest == g.assignment_digest(a)
    assert signed.result_digest == g.result_digest(signed.result)
    # What the scheduler reads is the JSON on the bus.
    received = TaskResultReported.model_validate_json(signed.model_dump_json())
    assert g.report_refusal(received, NODE.public_key, g.assignment_digest(a)) is None


def test_a_report_without_result_signs_too() -> None:
    a = _assignment()
    failed = _report().model_copy(
        update={"outcome": "input_error", "result": None, "error": "invalid_input", "message": "no text"}
    )
    signed = g.sign_report(NODE, failed, a)
    assert signed.result_digest is None
    assert g.report_refusal(signed, NODE.public_key, g.assignment_digest(a)) is None


def test_report_refusals_name_their_reason() -> None:
    a = _assignment()
    expected = g.assignment_digest(a)
    signed = g.sign_report(NODE, _report(), a)

    assert g.report_refusal(_report(), NODE.public_key, expected) == "unsigned_report"
    assert g.report_refusal(signed, None, expected) == "unknown_node_key"
    # Signed by another key (a replay re-signed with a fresh key).
    resigned = g.sign_report(OTHER, _report(), a)
    assert g.report_refusal(resigned, NODE.public_key, expected) == "signed_by_another_key"
    # Another key's signature under the node's name.
    forged = signed.model_copy(update={"signature": OTHER.sign(g.report_payload(signed))})
    assert g.report_refusal(forged, NODE.public_key, expected) == "bad_report_signature"
    assert g.report_refusal(signed.model_copy(update={"signature": "x"}), NODE.public_key, expected) == (
        "bad_report_signature"
    )
    # Tampered signed fields: usage, attestation, outcome.
    more_tokens = signed.model_copy(update={"usage": TaskUsage(prompt_tokens=9000, duration_s=2.5)})
    assert g.report_refusal(more_tokens, NODE.public_key, expected) == "bad_report_signature"
    assert signed.attestation is not None
    solar = signed.model_copy(
        update={"attestation": signed.attestation.model_copy(update={"source": "solar"})}
    )
    assert g.report_refusal(solar, NODE.public_key, expected) == "bad_report_signature"
    # The result altered in transit (its digest still the signed one).
    altered = signed.model_copy(
        update={"result": {"summary": "Les comptes sont approuvés.", "amounts": [{"value": 18451.0}]}}
    )
    assert g.report_refusal(altered, NODE.public_key, expected) == "result_altered"
    # The result replaced and its digest recomputed: the signature no longer covers it.
    redigested = altered.model_copy(update={"result_digest": g.result_digest(altered.result)})
    assert g.report_refusal(redigested, NODE.public_key, expected) == "bad_report_signature"


def test_a_report_replayed_for_another_assignment_is_refused() -> None:
    a1 = _assignment("t1", attempt=1)
    report = g.sign_report(NODE, _report("t1", attempt=1), a1)
    # The same signed report offered for attempt 2 of the task, for another task, or after the
    # node was given a different assignment for this attempt (another node's).
    for other in (_assignment("t1", attempt=2), _assignment("t9"), _assignment("t1", node_id="node-b")):
        assert (
            g.report_refusal(report, NODE.public_key, g.assignment_digest(other))
            == "not_the_assignment_given"
        )
    # Pointing it at the other assignment's digest breaks the signature.
    a2 = _assignment("t1", attempt=2)
    moved = report.model_copy(update={"assignment_digest": g.assignment_digest(a2), "attempt": 2})
    assert g.report_refusal(moved, NODE.public_key, g.assignment_digest(a2)) == "bad_report_signature"


def test_digests_are_canonical() -> None:
    assert g.digest({"a": 1, "b": 2}) == g.digest({"b": 2, "a": 1})
    assert g.canonical_json({"b": "é", "a": [1]}) == '{"a":[1],"b":"é"}'.encode()
    assert g.result_digest(None) is None
