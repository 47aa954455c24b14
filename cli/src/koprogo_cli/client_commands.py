"""`koprogo chat | models | stats | health`: the running gateway from a terminal.

Each command talks to `KOPROGO_URL` (default http://127.0.0.1:8080) with the token of
`KOPROGO_TOKEN`, else the dev token `koprogo up` wrote in the data folder. Output is a
readable table by default, the API's JSON with `--json`. Errors print the gateway's own
`{error, message}` on one line and exit 1; a 401 adds which token was sent and where the CLI
looked for one; an unreachable gateway says so (and, on this machine, how to start the stack).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from koprogo_cli.dev_auth import DEMO_COPRO_ID, cli_token, dev_token_path
from koprogo_cli.instance import DEFAULT_GATEWAY_URL, GATEWAY_PORT, data_dir_of, folder_args
from koprogo_cli.invocation import command_hint
from koprogo_shared.catalogue import BUNDLED_MODEL_ID

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class GatewayError(Exception):
    """The gateway refused (with its HTTP status), or its stream reported an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _client(args: argparse.Namespace, timeout: float = 30.0) -> httpx.Client:
    token = cli_token(data_dir_of(args))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=timeout)


def _checked(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = {"error": "http_error", "message": response.text[:300]}
    if response.status_code >= 400:
        raise GatewayError(
            f"{response.status_code} {body.get('error', '')}: {body.get('message', body)}",
            status=response.status_code,
        )
    return body


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A plain-text table, columns as wide as their widest cell."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _checked(client.get("/mcp/v1/models"))
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return 0
    rows = [
        (m["id"], m["provider"], m["context_length"], m["is_available"], m["edge_compatible"])
        for m in body["models"]
    ]
    print(table(rows, ("model", "provider", "context", "available", "edge")))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("from", args.since), ("to", args.until)) if v}
    if args.copro:
        params["context"] = f"copro:{args.copro}"
    with _client(args) as client:
        body = _checked(client.get("/mcp/v1/stats", params=params))
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return 0
    print(table([(k, v) for k, v in body.items()], ("figure", "value")))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "model": args.model,
        "messages": [{"role": "user", "content": args.message}],
        "context": f"copro:{args.copro}",
    }
    if not args.json:
        body["stream"] = True
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    if args.policy:
        body["routing"] = {"policy": args.policy}
    with _client(args, timeout=300.0) as client:
        if args.json:
            print(json.dumps(_checked(client.post("/mcp/v1/chat", json=body)), indent=2, ensure_ascii=False))
            return 0
        with client.stream("POST", "/mcp/v1/chat", json=body) as response:
            if response.status_code >= 400:
                response.read()
                _checked(response)
            final = _print_stream(_sse_events(response.iter_lines()))
    if final is not None:
        info = final.get("execution_info", {})
        usage = final.get("usage", {})
        print(
            f"\n[{final.get('model')} · {info.get('execution_type')} {info.get('node_id')} · "
            f"{usage.get('total_tokens')} tokens · {info.get('latency_ms', 0):.0f} ms · "
            f"{info.get('co2_grams', 0):.5f} g CO₂]",
            file=sys.stderr,
        )
    return 0


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) pairs of a Server-Sent Events stream."""
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if data:
        yield event, json.loads("\n".join(data))


def _print_stream(events: Iterator[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """Print deltas as they come; return the final event's data (raise GatewayError on an error event)."""
    final = None
    for name, data in events:
        if name == "error":
            raise GatewayError(f"{data.get('error')}: {data.get('message')}")
        if "delta" in data:
            print(data["delta"], end="", flush=True)
        else:
            final = data
    print()
    return final


def cmd_health(args: argparse.Namespace) -> int:
    with httpx.Client(base_url=args.url, timeout=5) as client:
        response = client.get("/ready")
    body = response.json()
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(table(list(body.items()), ("check", "ok")))
    return 0 if response.status_code == 200 else 1


def add_client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--url", default=os.environ.get("KOPROGO_URL", DEFAULT_GATEWAY_URL), help="the gateway"
        )
        parser.add_argument("--data-dir", help="where `koprogo up` keeps the dev token (default ./data)")
        parser.add_argument("--json", action="store_true", help="the API's JSON instead of a table")

    chat = sub.add_parser("chat", help="ask a question; the answer streams to the terminal")
    chat.add_argument("message")
    chat.add_argument(
        "-m", "--model", default=BUNDLED_MODEL_ID, help=f"a model id or auto (default {BUNDLED_MODEL_ID})"
    )
    chat.add_argument(
        "--copro", default=DEMO_COPRO_ID, help="the copro (default: the dev token's demo copro)"
    )
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--policy", choices=("edge_only", "prefer_edge", "lowest_carbon", "fastest"))
    common(chat)
    chat.set_defaults(func=cmd_chat)
    models = sub.add_parser(
        "models",
        help="the models and whether something serves them now; `models pull|list|rm` manage this "
        "machine's GGUF files (`koprogo models pull -h`)",
    )
    common(models)
    models.set_defaults(func=cmd_models)
    stats = sub.add_parser("stats", help="tokens, CO₂, latency and where requests ran")
    stats.add_argument("--copro", help="one copro (default: all the token's copros)")
    stats.add_argument("--since", help="ISO date or time")
    stats.add_argument("--until", help="ISO date or time")
    common(stats)
    stats.set_defaults(func=cmd_stats)
    health = sub.add_parser("health", help="ask the gateway whether it is ready")
    common(health)
    health.set_defaults(func=cmd_health)


def run_client_command(args: argparse.Namespace) -> int:
    """Run a client command, turning the gateway's refusals into one line and exit 1."""
    try:
        code: int = args.func(args)
        return code
    except GatewayError as exc:
        advice = f" — {token_advice(args)}" if exc.status == 401 else ""
        print(f"koprogo {args.command}: {exc}{advice}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(
            f"koprogo {args.command}: gateway unreachable at {args.url}: {exc}{start_advice(args.url)}",
            file=sys.stderr,
        )
        return 1


def token_advice(args: argparse.Namespace) -> str:
    """After a 401: which token the CLI sent, where it looked for one, and how to point it elsewhere."""
    data_dir = data_dir_of(args)
    token_file = dev_token_path(data_dir)
    # cli_token's order: KOPROGO_TOKEN first, then the dev token file.
    if os.environ.get("KOPROGO_TOKEN", "").strip():
        return (
            "the token in KOPROGO_TOKEN was refused (expired, or not signed for this gateway); "
            f"set a valid one, or unset it to send the dev token at {token_file}"
        )
    stop, restart = (command_hint(verb, *folder_args(data_dir)) for verb in ("down", "up"))
    if cli_token(data_dir, environ={}) is not None:
        return (
            f"the dev token at {token_file} was refused (expired, or from another stack than {args.url}): "
            f"restart the stack (`{stop}`, then `{restart}` writes a fresh one), or set KOPROGO_TOKEN or --data-dir DIR"
        )
    return (
        f"no token sent: no KOPROGO_TOKEN and no dev token at {token_file}; run from the folder where "
        "`make up` ran, or set KOPROGO_TOKEN=<token>, --data-dir DIR or KOPROGO_DATA_DIR=DIR"
    )


def start_advice(url: str) -> str:
    """After a failed connection to this machine: the command that starts a stack there."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK_HOSTS:
        return ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    up = command_hint("up", *(("--port", str(port)) if port != GATEWAY_PORT else ()))
    return f"; is the stack up? `{up}` starts it"
