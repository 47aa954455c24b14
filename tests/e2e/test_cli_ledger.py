"""`koprogo ledger export | verify`, as a member types them: an export checked offline (good, altered,
rewritten and re-hashed, signed by another key), and the gateway's export and verification.

The exports are built with `koprogo_shared.token_chain` and heads signed with a real nkey; the
gateway is a small HTTP app serving the two routes the CLI calls (the CLI's side: path, token,
streaming to a file, the report it prints).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nkeys
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from koprogo_cli.main import build_parser
from koprogo_shared.grid_signing import Signer
from koprogo_shared.token_chain import GENESIS, entry_hash, export_lines, head_payload, verify_chain
from tests.integration.cloud_support import serving_in_thread

TOKEN = "member-token"


def koprogo(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("KOPROGO_TOKEN", "KOPROGO_URL")}
    return subprocess.run(
        [sys.executable, "-m", "koprogo_cli.main", *args],
        env={**environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def new_signer() -> Signer:
    return Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


MOVES = [
    ("copro:c1", "node:pi-1", 900, "reward"),
    ("copro:c1", "fund:solidarity", 100, "fund_share"),
    ("copro:c1", "escrow:pi-2", 900, "reward"),
    ("copro:c1", "fund:solidarity", 250, "co2_credit"),
    ("escrow:pi-2", "fund:solidarity", 900, "escrow_forfeit"),
]


def chain(moves: list[tuple[str, str, int, str]] = MOVES) -> list[dict[str, Any]]:
    """Entries as the ledger writes them: each with the previous one's hash and its own."""
    entries: list[dict[str, Any]] = []
    prev = GENESIS
    for seq, (debit, credit, amount, kind) in enumerate(moves, start=1):
        entry = {
            "seq": seq,
            "entry_id": f"e-{seq}",
            "recorded_at": f"2026-12-02T06:0{seq}:00.000000+00:00",
            "debit": debit,
            "credit": credit,
            "amount_mt": amount,
            "kind": kind,
            "task_id": f"t-{seq}",
            "node_id": credit.split(":")[1] if credit.startswith(("node:", "escrow:")) else None,
            "copro_id": "c1",
            "memo": None,
            "prev_hash": prev,
        }
        entry["hash"] = entry_hash(entry)
        prev = entry["hash"]
        entries.append(entry)
    return entries


def signed_heads(signer: Signer, entries: list[dict[str, Any]], at: tuple[int, ...]) -> list[dict[str, Any]]:
    return [
        {
            "seq": seq,
            "hash": entries[seq - 1]["hash"],
            "signature": signer.sign(head_payload(seq, entries[seq - 1]["hash"])),
            "signed_at": "2026-12-02T07:00:00+00:00",
        }
        for seq in at
    ]


def write_export(path: Path, entries: list[dict[str, Any]], heads: list[dict[str, Any]], key: str) -> Path:
    path.write_text("\n".join(export_lines(entries, heads, key)) + "\n")
    return path


@pytest.fixture
def ledger() -> tuple[Signer, list[dict[str, Any]], list[dict[str, Any]]]:
    signer = new_signer()
    entries = chain()
    return signer, entries, signed_heads(signer, entries, (2, 4))


def test_a_good_export_verifies_offline(tmp_path: Path, ledger: Any) -> None:
    signer, entries, heads = ledger
    export = write_export(tmp_path / "ledger.jsonl", entries, heads, signer.public_key)
    done = koprogo("ledger", "verify", "--export", str(export))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"OK: 5 entries, 2 signed heads, head 5 {entries[-1]['hash']}"
    # The key known from elsewhere, and the JSON report.
    done = koprogo("ledger", "verify", "--export", str(export), "--ledger-key", signer.public_key, "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"] and report["balances_sum_tokens"] == 0
    assert report["head"] == {"seq": 5, "hash": entries[-1]["hash"]}


def test_an_entry_altered_in_the_export_fails_and_is_named(tmp_path: Path, ledger: Any) -> None:
    signer, entries, heads = ledger
    export = write_export(tmp_path / "ledger.jsonl", entries, heads, signer.public_key)
    lines = export.read_text().splitlines()
    third = json.loads(lines[3])
    assert third["entry"]["seq"] == 3
    third["entry"]["credit"] = "node:pi-2"  # the escrowed reward paid out directly
    lines[3] = json.dumps(third)
    export.write_text("\n".join(lines) + "\n")
    done = koprogo("ledger", "verify", "--export", str(export))
    assert done.returncode == 1
    assert done.stdout.strip() == "FAILED at 3: entry 3: its fields do not hash to its hash (altered)"


def test_history_rewritten_and_re_hashed_fails_at_the_first_signed_head_past_it(
    tmp_path: Path, ledger: Any
) -> None:
    signer, _entries, heads = ledger
    rewritten = chain([MOVES[0], ("copro:c1", "node:pi-1", 100, "fund_share"), *MOVES[2:]])
    assert verify_chain(rewritten).ok  # a consistent chain on its own...
    export = write_export(tmp_path / "ledger.jsonl", rewritten, heads, signer.public_key)
    done = koprogo("ledger", "verify", "--export", str(export))
    assert done.returncode == 1
    assert done.stdout.strip() == (
        "FAILED at 2: head 2: the chain's hash at 2 differs from the signed head (history rewritten)"
    )
    # ...and heads re-signed by the rewriter's own key fail against the ledger key the member knows.
    forger = new_signer()
    forged = write_export(
        tmp_path / "forged.jsonl", rewritten, signed_heads(forger, rewritten, (2, 4)), forger.public_key
    )
    assert koprogo("ledger", "verify", "--export", str(forged)).returncode == 0
    done = koprogo("ledger", "verify", "--export", str(forged), "--ledger-key", signer.public_key)
    assert done.returncode == 1
    assert done.stdout.startswith(f"FAILED: the export names the ledger key '{forger.public_key}'")


def test_an_entry_removed_from_the_end_is_caught_by_a_signed_head(tmp_path: Path, ledger: Any) -> None:
    signer, entries, heads = ledger
    export = write_export(tmp_path / "ledger.jsonl", entries[:3], heads, signer.public_key)
    done = koprogo("ledger", "verify", "--export", "-", stdin=export.read_text())
    assert done.returncode == 1
    assert done.stdout.strip() == "FAILED at 4: head 4: the chain has no entry 4 (entries were removed)"


def test_a_file_that_is_no_export_fails_and_a_missing_one_is_a_usage_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"hello": "world"}\n')
    done = koprogo("ledger", "verify", "--export", str(junk))
    assert done.returncode == 1 and done.stdout.startswith("FAILED: not a token-ledger export")
    done = koprogo("ledger", "verify", "--export", str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2 and "missing.jsonl" in done.stderr


def fake_gateway(lines: list[str], report: dict[str, Any], seen: list[str]) -> Starlette:
    """The gateway's two ledger routes, refusing a request without the member's token."""

    def authorised(request: Request) -> bool:
        seen.append(request.url.path)
        return request.headers.get("authorization") == f"Bearer {TOKEN}"

    async def export(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": "unauthorized", "message": "no token"}, status_code=401)

        async def body() -> Any:
            for line in lines:
                yield line + "\n"

        return StreamingResponse(body(), media_type="application/x-ndjson")

    async def verify(request: Request) -> Response:
        if not authorised(request):
            return PlainTextResponse("no", status_code=401)
        return JSONResponse(report)

    return Starlette(
        routes=[Route("/mcp/v1/grid/ledger/export", export), Route("/mcp/v1/grid/ledger/verify", verify)]
    )


@pytest.fixture
def served(ledger: Any) -> Iterator[tuple[str, list[str], list[str]]]:
    signer, entries, heads = ledger
    lines = list(export_lines(entries, heads, signer.public_key))
    seen: list[str] = []
    report = verify_chain(entries, heads, signer.public_key).as_json()
    with serving_in_thread(fake_gateway(lines, report, seen)) as port:
        yield f"http://127.0.0.1:{port}", lines, seen


def test_export_writes_the_gateways_lines_to_a_file_that_then_verifies(
    tmp_path: Path, served: tuple[str, list[str], list[str]], ledger: Any
) -> None:
    url, lines, seen = served
    target = tmp_path / "ledger.jsonl"
    env = {"KOPROGO_TOKEN": TOKEN}
    done = koprogo("ledger", "export", "-o", str(target), "--url", url, env=env)
    assert done.returncode == 0, done.stderr
    assert target.read_text().splitlines() == lines
    assert "exported 5 entries and 2 signed heads" in done.stderr
    assert not (tmp_path / "ledger.jsonl.partial").exists()
    assert koprogo("ledger", "verify", "--export", str(target)).returncode == 0
    # To stdout, and the gateway's own verification printed the same way.
    done = koprogo("ledger", "export", "--url", url, env=env)
    assert done.stdout.splitlines() == lines
    done = koprogo("ledger", "verify", "--url", url, env=env)
    assert done.returncode == 0 and done.stdout.strip() == (
        f"OK: 5 entries, 2 signed heads, head 5 {ledger[1][-1]['hash']}"
    )
    assert seen == ["/mcp/v1/grid/ledger/export", "/mcp/v1/grid/ledger/export", "/mcp/v1/grid/ledger/verify"]


def test_a_refused_export_leaves_no_file_and_says_why(
    tmp_path: Path, served: tuple[str, list[str], list[str]]
) -> None:
    url, _lines, _seen = served
    target = tmp_path / "ledger.jsonl"
    done = koprogo("ledger", "export", "-o", str(target), "--url", url, "--data-dir", str(tmp_path))
    assert done.returncode == 1
    assert "401 unauthorized: no token" in done.stderr
    assert not target.exists() and not (tmp_path / "ledger.jsonl.partial").exists()


def test_the_gateways_failed_verification_is_printed_and_exits_1(tmp_path: Path) -> None:
    broken = {
        "ok": False,
        "entries": 12,
        "signed_heads": 1,
        "head": {"seq": 12, "hash": "ab" * 32},
        "balances_sum_tokens": 0.0,
        "broken_at": 7,
        "reason": "entry 7: its fields do not hash to its hash (altered)",
    }
    with serving_in_thread(fake_gateway([], broken, [])) as port:
        done = koprogo("ledger", "verify", "--url", f"http://127.0.0.1:{port}", env={"KOPROGO_TOKEN": TOKEN})
    assert done.returncode == 1
    assert done.stdout.strip() == "FAILED at 7: entry 7: its fields do not hash to its hash (altered)"


def test_one_entry_and_one_head_are_said_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signer = new_signer()
    entries = chain(MOVES[:1])
    export = write_export(
        tmp_path / "one.jsonl", entries, signed_heads(signer, entries, (1,)), signer.public_key
    )
    args = build_parser().parse_args(["ledger", "verify", "--export", str(export)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == f"OK: 1 entry, 1 signed head, head 1 {entries[0]['hash']}"
