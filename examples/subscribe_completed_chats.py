"""Print every completed chat of one copro, as a third-party subscriber would.

An ordered, ephemeral JetStream consumer on `koprogo.events.chat.completed.<copro>` (the
KOPROGO_EVENTS stream): nothing is left on the server when the script stops. It starts
with the chats completed from now on, or from `--since` (an ISO 8601 time).

    python examples/subscribe_completed_chats.py --copro demo --since 2026-11-29T00:00:00Z
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from nats.js import api
from pydantic import ValidationError

from koprogo_shared.events import ChatCompleted
from koprogo_shared.nats_connection import connect_nats
from koprogo_shared.subjects import EVENTS_STREAM, chat_completed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copro", required=True, help="the copro id whose chats to print")
    parser.add_argument("--nats-url", default="nats://localhost:4222")
    parser.add_argument(
        "--nkey-seed-file", type=Path, help="this subscriber's NATS user seed, if the server asks"
    )
    parser.add_argument("--since", type=datetime.fromisoformat, help="start at this time (default: now)")
    parser.add_argument("--max-messages", type=int, default=0, help="stop after this many chats (0: never)")
    parser.add_argument("--json", action="store_true", help="print each event as one JSON line")
    return parser.parse_args(argv)


def describe(chat: ChatCompleted) -> str:
    info = chat.execution_info
    where = info.execution_type + (f" node {info.node_id}" if info.node_id else "")
    return (
        f"{chat.time.isoformat()} request {chat.request_id} model {chat.model} on {where}: "
        f"{chat.usage.total_tokens} tokens, {info.co2_grams:.4f} g CO2 ({info.co2_saved_grams:.4f} g saved), "
        f"{info.latency_ms:.0f} ms\n  {chat.content}"
    )


async def run(args: argparse.Namespace) -> int:
    nc, js = await connect_nats(args.nats_url, "completed-chats-example", nkey_seed_file=args.nkey_seed_file)
    if args.since is None:
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
    else:
        since = args.since if args.since.tzinfo else args.since.replace(tzinfo=UTC)
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=since)
    # A node with a NATS key publishes on `<that subject>.node.<its id>`, the cloud worker on
    # `<that subject>.cloud`: all are under `koprogo.events.chat.completed.>`, filtered here by copro.
    subject = chat_completed(args.copro).rsplit(".", 1)[0] + ".>"
    sub = await js.subscribe(subject, stream=EVENTS_STREAM, ordered_consumer=True, config=config)
    print(f"listening on {subject} for copro {args.copro}", file=sys.stderr, flush=True)
    printed = 0
    try:
        async for msg in sub.messages:
            try:
                chat = ChatCompleted.model_validate_json(msg.data)
            except ValidationError as exc:
                print(
                    f"skipped a message that is no ChatCompleted: {exc.error_count()} errors", file=sys.stderr
                )
                continue
            if chat.copro_id != args.copro:
                continue
            print(json.dumps(chat.model_dump(mode="json")) if args.json else describe(chat), flush=True)
            printed += 1
            if args.max_messages and printed >= args.max_messages:
                break
    finally:
        await sub.unsubscribe()
        await nc.close()
    return 0


def main() -> int:
    try:
        return asyncio.run(run(parse_args()))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
