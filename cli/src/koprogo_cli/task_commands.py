"""`koprogo execute | tasks`: grid tasks (invoice OCR, translations, meeting summaries, expense forecasts).

`koprogo execute TYPE [FILE]` submits a task to `POST /mcp/v1/execute` (FILE uploaded as the
multipart part `document`; `-` reads it from standard input; `--json` and `--param` make its
`input_data`), then follows it with `GET /mcp/v1/tasks/{id}` until it ends: each change (status,
attempt, node) is a line on stderr, with a spinner line when stderr is a terminal. The result goes
to stdout as JSON, alone, so `koprogo execute ... | jq` works. Exit 0 when completed; 1 with the
error on stderr when it failed, expired or was cancelled; 124 when `--timeout` ran out (the task
still runs); 130 on Ctrl-C, which cancels the task (`DELETE /mcp/v1/tasks/{id}`: interrupting
means "I no longer want it"; to leave a task running, submit it with `--no-wait`). A second
Ctrl-C while the cancel is sent quits at once.

`koprogo tasks` lists the token's copros' tasks (filters as `GET /mcp/v1/tasks`); `koprogo tasks
ID` shows one. Gateway, token and error handling are `client_commands`'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, get_args

import httpx

from koprogo_cli.client_commands import _checked, _client, table
from koprogo_cli.instance import DEFAULT_GATEWAY_URL
from koprogo_cli.task_progress import (
    ATTEMPT_HEADERS,
    EXIT_INTERRUPTED,
    EXIT_TASK_ENDED_WITHOUT_RESULT,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    FINAL_STATUSES,
    REPLICA_HEADERS,
    TASK_HEADERS,
    Progress,
    TaskInputError,
    failure_message,
    final_line,
    input_data_of,
    poll_interval,
    replica_rows,
    task_detail,
    task_rows,
)
from koprogo_shared.task_events import TASK_TYPES, TaskStatus

UPLOAD_TIMEOUT_S = 300.0
# After a cancel, how long to watch for the scheduler's decision before exiting anyway.
CANCEL_WATCH_S = 10.0
SPINNER_TICK_S = 0.1


def cmd_execute(args: argparse.Namespace) -> int:
    try:
        input_data = input_data_of(args.json, args.param)
        document = _document(args.file)
    except TaskInputError as exc:
        print(f"koprogo execute: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with _client(args, timeout=UPLOAD_TIMEOUT_S) as client:
        try:
            accepted = _submit(client, args.task_type, input_data, args.copro, document)
        except KeyboardInterrupt:
            print(
                "koprogo execute: interrupted while submitting; the task may have been accepted: "
                "`koprogo tasks` lists them",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        if args.no_wait:
            print(json.dumps(accepted, indent=2, ensure_ascii=False))
            print(f"follow it with: koprogo tasks {accepted['id']}", file=sys.stderr)
            return 0
        return _follow(client, str(accepted["id"]), args.timeout, Progress(sys.stderr))


def _document(file: str | None) -> tuple[str, bytes] | None:
    if file is None:
        return None
    if file == "-":
        return "stdin", sys.stdin.buffer.read()
    try:
        return Path(file).name, Path(file).read_bytes()
    except OSError as exc:
        raise TaskInputError(f"{file}: {exc.strerror or exc}") from None


def _submit(
    client: httpx.Client,
    task_type: str,
    input_data: dict[str, Any],
    copro: str | None,
    document: tuple[str, bytes] | None,
) -> dict[str, Any]:
    if document is None:
        body: dict[str, Any] = {"task_type": task_type, "input_data": input_data}
        if copro:
            body["copro_id"] = copro
        accepted: dict[str, Any] = _checked(client.post("/mcp/v1/execute", json=body))
        return accepted
    form = {"task_type": task_type, "input_data": json.dumps(input_data, ensure_ascii=False)}
    if copro:
        form["copro_id"] = copro
    accepted = _checked(client.post("/mcp/v1/execute", data=form, files={"document": document}))
    return accepted


def _follow(client: httpx.Client, task_id: str, timeout_s: float | None, progress: Progress) -> int:
    """Wait for the task to end, reporting on the way; Ctrl-C cancels it."""
    start = time.monotonic()
    try:
        while True:
            elapsed = time.monotonic() - start
            task = _look(client, task_id, progress)
            if task is not None:
                progress.show(task, elapsed)
                if task.get("status") in FINAL_STATUSES:
                    return _ended(task, time.monotonic() - start, progress)
            if timeout_s is not None and elapsed >= timeout_s:
                progress.say(
                    f"task {task_id} still {(task or {}).get('status', 'unknown')} after {timeout_s:g} s; "
                    f"it goes on: follow it with `koprogo tasks {task_id}`"
                )
                return EXIT_WAIT_TIMEOUT
            _sleep(poll_interval(elapsed), start, progress)
    except KeyboardInterrupt:
        return _cancel(client, task_id, progress)


def _look(client: httpx.Client, task_id: str, progress: Progress) -> dict[str, Any] | None:
    """The task now; None after a 429 (the wait for the rate limit's window is done here)."""
    response = client.get(f"/mcp/v1/tasks/{task_id}")
    if response.status_code == 429:
        retry = float(response.headers.get("Retry-After", "5") or 5)
        progress.say(f"task {task_id}: rate limited, looking again in {retry:g} s")
        time.sleep(retry)
        return None
    task: dict[str, Any] = _checked(response)
    return task


def _sleep(seconds: float, start: float, progress: Progress) -> None:
    """Sleep `seconds`, redrawing the spinner meanwhile."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(SPINNER_TICK_S, left))
        progress.tick(time.monotonic() - start)


def _ended(task: dict[str, Any], elapsed_s: float, progress: Progress) -> int:
    if task.get("status") != "completed":
        progress.say(f"koprogo execute: {failure_message(task)}")
        return EXIT_TASK_ENDED_WITHOUT_RESULT
    progress.say(final_line(task, elapsed_s))
    print(json.dumps(task.get("result"), indent=2, ensure_ascii=False))
    return 0


def _cancel(client: httpx.Client, task_id: str, progress: Progress) -> int:
    """After Ctrl-C: DELETE the task, then watch briefly for the scheduler's word."""
    progress.say(f"interrupted: cancelling task {task_id} (Ctrl-C again to quit without waiting)")
    try:
        response = client.delete(f"/mcp/v1/tasks/{task_id}")
        if response.status_code == 409:
            # It ended meanwhile: say how, the result is still there to read.
            progress.say(
                f"task {task_id} had already ended ({response.json().get('status')}): see `koprogo tasks {task_id}`"
            )
            return EXIT_INTERRUPTED
        _checked(response)
        deadline = time.monotonic() + CANCEL_WATCH_S
        status = "pending"
        while time.monotonic() < deadline:
            status = str(_checked(client.get(f"/mcp/v1/tasks/{task_id}")).get("status"))
            if status in FINAL_STATUSES:
                break
            time.sleep(0.5)
        progress.say(f"task {task_id} {status}" + ("" if status in FINAL_STATUSES else " (cancel requested)"))
    except KeyboardInterrupt:
        progress.say(f"task {task_id} may still run: `koprogo tasks {task_id}` tells")
    return EXIT_INTERRUPTED


def cmd_tasks(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.task_id:
            task: dict[str, Any] = _checked(client.get(f"/mcp/v1/tasks/{args.task_id}"))
            return _show(task, args.json)
        params = {
            name: value
            for name, value in (
                ("status", args.status),
                ("task_type", args.task_type),
                ("from", args.since),
                ("to", args.until),
                ("limit", args.limit),
                ("copro_id", args.copro),
            )
            if value is not None
        }
        body = _checked(client.get("/mcp/v1/tasks", params=params))
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
    elif body["tasks"]:
        print(table(task_rows(body["tasks"]), TASK_HEADERS))
    else:
        print("no tasks", file=sys.stderr)
    return 0


def _show(task: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(task, indent=2, ensure_ascii=False))
        return 0
    fields, attempts = task_detail(task)
    print(table(fields, ("field", "value")))
    if attempts:
        print()
        print(table(attempts, ATTEMPT_HEADERS))
    if replicas := replica_rows(task):
        print("\nverification replicas:")
        print(table(replicas, REPLICA_HEADERS))
    if task.get("result") is not None:
        print("\nresult:")
        print(json.dumps(task["result"], indent=2, ensure_ascii=False))
    return 0


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("a number of seconds above 0")
    return value


def add_task_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def gateway(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--url", default=os.environ.get("KOPROGO_URL", DEFAULT_GATEWAY_URL), help="the gateway"
        )
        parser.add_argument("--data-dir", help="where `koprogo up` keeps the dev token (default ./data)")

    execute = sub.add_parser(
        "execute",
        help="run a grid task (ocr_invoice, translate_document, summarize_meeting, predict_expenses) "
        "and print its result as JSON",
        description="Submit a grid task, follow it on stderr, print its result as JSON on stdout. "
        "Ctrl-C cancels the task (DELETE); --no-wait leaves it running.",
    )
    execute.add_argument("task_type", choices=TASK_TYPES, metavar="TYPE", help=", ".join(TASK_TYPES))
    execute.add_argument(
        "file", nargs="?", metavar="FILE", help="the document to upload (- for standard input)"
    )
    execute.add_argument(
        "--json",
        metavar="JSON",
        help="the task's input_data: a JSON object, or @file.json (@- standard input)",
    )
    execute.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one input_data field (repeatable, over --json); VALUE is JSON when it reads as JSON, else text",
    )
    execute.add_argument("--copro", help="the copro the task is for (default: the token's only copro)")
    execute.add_argument(
        "--no-wait", action="store_true", help="print the accepted task (its id) and return at once"
    )
    execute.add_argument(
        "--timeout", type=_seconds, help="stop waiting after this many seconds (exit 124; the task goes on)"
    )
    gateway(execute)
    execute.set_defaults(func=cmd_execute)

    tasks = sub.add_parser("tasks", help="list grid tasks, or show one (`koprogo tasks ID`)")
    tasks.add_argument("task_id", nargs="?", metavar="ID", help="a task id: show that task")
    tasks.add_argument("--status", choices=get_args(TaskStatus))
    tasks.add_argument("--type", dest="task_type", choices=TASK_TYPES)
    tasks.add_argument("--from", dest="since", metavar="WHEN", help="created at or after (ISO date or time)")
    tasks.add_argument("--to", dest="until", metavar="WHEN", help="created before (ISO date or time)")
    tasks.add_argument("--limit", type=int, help="at most this many (1-500, default 50)")
    tasks.add_argument("--copro", help="one copro (default: all the token's copros)")
    tasks.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
    gateway(tasks)
    tasks.set_defaults(func=cmd_tasks)
