"""`koprogo ledger export | verify`: the grid's token ledger, audited by any member.

`koprogo ledger export [-o FILE]` downloads the ledger as JSON lines
(`GET /mcp/v1/grid/ledger/export`: a header naming the ledger's public key, every entry in order,
every signed head; `koprogo_shared.token_chain`) to FILE, or to stdout. The file is written under a
temporary name and renamed once complete, so FILE is never half an export.

`koprogo ledger verify --export FILE` checks such a file offline, with no gateway and no token:
the hash chain recomputed entry by entry, every signed head's signature and hash, the balances
summing to zero (`token_chain.verify_export`). `--ledger-key KEY` also requires the export to name
that key (one the member got elsewhere: otherwise whoever rewrote the whole file could have signed
its heads with a key of their own). Without `--export`, the gateway runs the same check on the
database (`GET /mcp/v1/grid/ledger/verify`).

Either prints `OK` with the entries, signed heads and head hash (exit 0), or `FAILED` naming the
first entry (or head) that breaks and why (exit 1). A file that cannot be read exits 2.
Gateway, token and error handling are `client_commands`'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from koprogo_cli.client_commands import GatewayError, _checked, _client
from koprogo_cli.instance import DEFAULT_GATEWAY_URL
from koprogo_shared.token_chain import EXPORT_FORMAT, verify_export

EXPORT_PATH = "/mcp/v1/grid/ledger/export"
VERIFY_PATH = "/mcp/v1/grid/ledger/verify"
# A ledger of years streams for a while; the verification recomputes every hash on the server.
EXPORT_TIMEOUT_S = 600.0
EXIT_FAILED = 1
EXIT_UNREADABLE = 2


def cmd_ledger_export(args: argparse.Namespace) -> int:
    with _client(args, timeout=EXPORT_TIMEOUT_S) as client, client.stream("GET", EXPORT_PATH) as response:
        if response.status_code >= 400:
            response.read()
            _checked(response)
        if args.output in (None, "-"):
            counts = _copy_lines(response.iter_lines(), sys.stdout)
            sys.stdout.flush()
        else:
            target = Path(args.output)
            partial = target.with_name(target.name + ".partial")
            try:
                with partial.open("w", encoding="utf-8") as out:
                    counts = _copy_lines(response.iter_lines(), out)
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
    entries, heads = counts
    where = "stdout" if args.output in (None, "-") else args.output
    check = "koprogo ledger verify --export " + ("FILE" if where == "stdout" else where)
    print(
        f"exported {entries} entries and {heads} signed heads to {where}; check it with `{check}`",
        file=sys.stderr,
    )
    return 0


def _copy_lines(lines: Any, out: TextIO) -> tuple[int, int]:
    """Write the export's lines to `out` as they come; (entries, heads) counted on the way."""
    entries = heads = 0
    first = True
    for line in lines:
        if not line.strip():
            continue
        if first:
            _check_header(line)
            first = False
        elif line.startswith('{"entry"'):
            entries += 1
        elif line.startswith('{"head"'):
            heads += 1
        out.write(line + "\n")
    if first:
        raise GatewayError("the gateway sent an empty export (not even its header line)")
    return entries, heads


def _check_header(line: str) -> None:
    try:
        header = json.loads(line)
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise GatewayError(
            f"the gateway's answer is not a token-ledger export ({EXPORT_FORMAT}): {line[:120]}"
        )


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    if args.export is not None:
        return _verify_file(args.export, args.ledger_key, args.json)
    if args.ledger_key is not None:
        print(
            "koprogo ledger verify: --ledger-key checks an export (--export FILE); the gateway checks "
            "its database with the ledger's key it holds",
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    with _client(args, timeout=EXPORT_TIMEOUT_S) as client:
        response = client.get(VERIFY_PATH)
    try:
        body = response.json()
    except ValueError:
        body = None
    # A broken chain may come with an error status; its report is still the answer to show.
    if not (isinstance(body, dict) and "ok" in body):
        body = _checked(response)
        if not (isinstance(body, dict) and "ok" in body):
            raise GatewayError(f"the gateway's answer is not a ledger verification: {str(body)[:200]}")
    return _print_report(body, args.json)


def _verify_file(path: str, ledger_key: str | None, as_json: bool) -> int:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        lines = text.splitlines()
    except OSError as exc:
        print(f"koprogo ledger verify: {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except UnicodeDecodeError:
        print(f"koprogo ledger verify: {path}: not UTF-8 text, so not an export", file=sys.stderr)
        return EXIT_FAILED
    try:
        report = verify_export(lines).as_json()
    except (ValueError, TypeError, KeyError) as exc:
        # Lines that are JSON but not entries a chain can hold count as a broken export.
        reason = f"not a token-ledger export: {exc}" if isinstance(exc, KeyError) else str(exc)
        return _print_report(_unreadable(reason), as_json)
    if ledger_key is not None:
        named = _header_key(lines)
        if named != ledger_key:
            report = {
                **report,
                "ok": False,
                "broken_at": None,
                "reason": f"the export names the ledger key {named!r}, not {ledger_key!r}: "
                "its heads were not signed by the ledger you know",
            }
    return _print_report(report, as_json)


def _header_key(lines: list[str]) -> str | None:
    key = json.loads(lines[0]).get("ledger_public_key")
    return None if key is None else str(key)


def _unreadable(reason: str) -> dict[str, Any]:
    return {"ok": False, "entries": 0, "signed_heads": 0, "head": None, "broken_at": None, "reason": reason}


def _print_report(report: dict[str, Any], as_json: bool) -> int:
    """`OK ...` (exit 0) or `FAILED ...` naming where and why (exit 1); the report as JSON with --json."""
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    elif report.get("ok"):
        head = report.get("head") or {}
        print(
            f"OK: {_count(report.get('entries', 0), 'entry', 'entries')}, "
            f"{_count(report.get('signed_heads', 0), 'signed head')}, "
            f"head {head.get('seq', '-')} {head.get('hash') or '(empty ledger)'}"
        )
    else:
        where = f" at {report['broken_at']}" if report.get("broken_at") is not None else ""
        print(f"FAILED{where}: {report.get('reason') or 'no reason given'}")
        print(
            f"  checked {_count(report.get('entries', 0), 'entry', 'entries')} and "
            f"{_count(report.get('signed_heads', 0), 'signed head')}",
            file=sys.stderr,
        )
    return 0 if report.get("ok") else EXIT_FAILED


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def add_ledger_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def gateway(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--url", default=os.environ.get("KOPROGO_URL", DEFAULT_GATEWAY_URL), help="the gateway"
        )
        parser.add_argument("--data-dir", help="where `koprogo up` keeps the dev token (default ./data)")

    ledger = sub.add_parser(
        "ledger", help="the grid's token ledger: export it, verify its hash chain and signed heads"
    )
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    export = ledger_sub.add_parser(
        "export", help="download the ledger as JSON lines (entries and signed heads), to check offline"
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write it there (default: standard output)")
    gateway(export)
    export.set_defaults(func=cmd_ledger_export)
    verify = ledger_sub.add_parser(
        "verify",
        help="check the ledger's hash chain, signed heads and zero sum: an export offline, or the gateway's",
        description="With --export FILE: offline, on a `koprogo ledger export` file (no gateway needed). "
        "Without: the gateway checks its database. Prints OK, or FAILED naming the entry and why (exit 1).",
    )
    verify.add_argument("--export", metavar="FILE", help="an export to check offline (- for standard input)")
    verify.add_argument(
        "--ledger-key",
        metavar="KEY",
        help="the ledger's public key as you know it (the operator's keys/ledger.pub; with `koprogo up`, "
        "<data>/secrets/nats/ledger.pub): an export naming another fails (with --export)",
    )
    verify.add_argument("--json", action="store_true", help="the verification as JSON")
    gateway(verify)
    verify.set_defaults(func=cmd_ledger_verify)
