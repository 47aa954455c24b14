"""What `koprogo execute` and `koprogo tasks` make of their arguments and of the gateway's tasks.

Plain functions over plain data (no HTTP): `input_data_of` builds a task's `input_data` from
`--json` and `--param`; `progress_lines` says what changed between two looks at a task (its
status, a new attempt, how an attempt ended); `spinner_line`, `final_line`, `failure_message`,
`task_rows`, `task_detail` and `replica_rows` render for the terminal. `Progress` writes the wait's
lines to a stream, with the spinner only when that stream is a terminal. A task verified by
redundancy (docs/grid-trust.md) says how far its verification is (`verification_summary`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
# Exit codes of `koprogo execute`: 0 completed, these otherwise.
EXIT_TASK_ENDED_WITHOUT_RESULT = 1
EXIT_USAGE = 2
EXIT_WAIT_TIMEOUT = 124  # as timeout(1): the task still runs
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT


class TaskInputError(ValueError):
    """`--json` or `--param` cannot be read; the message says which and why."""


def input_data_of(
    json_arg: str | None, params: Sequence[str], read_text: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """`--json` (an object, or `@file.json`, `@-` for standard input), then each `--param key=value` over it.

    A parameter's value is JSON when it reads as JSON (`6`, `true`, `[...]`, `"12"`), else text,
    so `--param target_language=nl --param horizon_months=6` gives `{"target_language": "nl",
    "horizon_months": 6}`.
    """
    read = read_text or _read_text
    data: dict[str, Any] = {}
    if json_arg is not None:
        text = read(json_arg[1:]) if json_arg.startswith("@") else json_arg
        where = f"--json {json_arg}" if json_arg.startswith("@") else "--json"
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskInputError(
                f"{where}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
        if not isinstance(parsed, dict):
            raise TaskInputError(f"{where}: must be a JSON object ({{...}}), the task's input_data")
        data.update(parsed)
    for param in params:
        key, sep, value = param.partition("=")
        if not sep or not key.strip():
            raise TaskInputError(f"--param {param!r}: use KEY=VALUE")
        data[key.strip()] = _param_value(value)
    return data


def _param_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _read_text(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise TaskInputError(f"--json @{name}: {exc.strerror or exc}") from None


def poll_interval(elapsed_s: float) -> float:
    """Seconds between two looks at a running task: often at first, then less (each look is a
    request against the user's rate limit, 100 a minute by default)."""
    if elapsed_s < 5:
        return 0.5
    if elapsed_s < 30:
        return 1.0
    return 2.0


def _attempts(task: dict[str, Any]) -> list[dict[str, Any]]:
    attempts = task.get("attempts") or []
    return [a for a in attempts if isinstance(a, dict)]


def progress_lines(previous: dict[str, Any] | None, task: dict[str, Any], elapsed_s: float) -> list[str]:
    """What happened to the task since `previous` (None: the first look), one line per change."""
    lines: list[str] = []
    before = {a.get("attempt"): a for a in _attempts(previous or {})}
    for attempt in _attempts(task):
        seen = before.get(attempt.get("attempt"))
        if seen is None:
            lines.append(f"attempt {attempt.get('attempt')} on {attempt.get('node_id')}")
        if attempt.get("outcome") and (seen is None or not seen.get("outcome")):
            lines.append(
                f"attempt {attempt.get('attempt')} on {attempt.get('node_id')} ended: {attempt['outcome']}"
            )
    status = task.get("status")
    summary = verification_summary(task) if status == "verifying" else None
    changed = previous is None or previous.get("status") != status
    if changed or (summary is not None and verification_summary(previous or {}) != summary):
        lines.append(f"{status}: {summary}" if summary else str(status))
    return [f"task {task.get('id')}: {line} ({elapsed_s:.1f} s)" for line in lines]


def verification_summary(task: dict[str, Any]) -> str | None:
    """How far the task's verification is, in a few words; None for a task without one."""
    v = task.get("verification")
    if not isinstance(v, dict):
        return None
    outcome = v.get("outcome")
    if v.get("policy") == "trusted":
        return "a trusted node's result, not checked this time" + (f" ({outcome})" if outcome else "")
    what = "spot check" if v.get("policy") == "spot_check" else "quorum"
    agreeing = f"{v.get('agreement', 0)} of {v.get('quorum')} owners agree"
    if outcome == "unverifiable":
        return f"{what}: unverifiable, {agreeing} after {len(v.get('replicas') or [])} replicas"
    return f"{what}: {agreeing}" + (f", {outcome}" if outcome and outcome != "pending" else "")


def spinner_line(task: dict[str, Any], elapsed_s: float, frame: int) -> str:
    """The one line a terminal redraws while waiting: a spinner, the status, the node, the time."""
    running = [a for a in _attempts(task) if not a.get("outcome")]
    where = f" on {running[-1].get('node_id')}, attempt {running[-1].get('attempt')}" if running else ""
    return f"{SPINNER[frame % len(SPINNER)]} {task.get('status')}{where} · {elapsed_s:.1f} s"


def final_line(task: dict[str, Any], elapsed_s: float) -> str:
    """After a completed task: where it ran, how long it took and its grams of CO₂."""
    attempts = _attempts(task)
    node = f" on {attempts[-1].get('node_id')}" if attempts else ""
    tries = f" ({len(attempts)} attempts)" if len(attempts) > 1 else ""
    co2 = task.get("co2_grams")
    grams = f" · {co2:.5f} g CO₂" if isinstance(co2, int | float) else ""
    summary = verification_summary(task)
    verified = f" · {summary}" if summary else ""
    return f"task {task.get('id')} {task.get('status')}{node}{tries} in {elapsed_s:.1f} s{grams}{verified}"


def failure_message(task: dict[str, Any]) -> str:
    """Why a task ended without a result: its status, its error code and message, its attempts."""
    error = task.get("error") or {}
    reason = ""
    if isinstance(error, dict) and (error.get("error") or error.get("message")):
        reason = (
            f": {error.get('error')}: {error.get('message')}"
            if error.get("message")
            else f": {error.get('error')}"
        )
    attempts = _attempts(task)
    tried = ""
    if attempts:
        tried = (
            " (attempts: "
            + ", ".join(f"{a.get('node_id')} {a.get('outcome') or 'unfinished'}" for a in attempts)
            + ")"
        )
    return f"task {task.get('id')} {task.get('status')}{reason}{tried}"


def task_rows(tasks: Sequence[dict[str, Any]]) -> list[tuple[object, ...]]:
    """`koprogo tasks`'s table: one row per task."""
    rows: list[tuple[object, ...]] = []
    for task in tasks:
        attempts = _attempts(task)
        rows.append(
            (
                task.get("id"),
                task.get("task_type"),
                task.get("status"),
                _when(task.get("created_at")),
                len(attempts),
                attempts[-1].get("node_id") if attempts else "-",
                task.get("co2_grams") if task.get("co2_grams") is not None else "-",
            )
        )
    return rows


TASK_HEADERS = ("id", "type", "status", "created", "attempts", "node", "g CO₂")
ATTEMPT_HEADERS = ("attempt", "node", "started", "ended", "outcome")


def task_detail(task: dict[str, Any]) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """`koprogo tasks ID`: the task's fields, and its attempts, as table rows."""
    error = task.get("error") or {}
    fields: list[tuple[object, ...]] = [
        ("id", task.get("id")),
        ("type", task.get("task_type")),
        ("status", task.get("status")),
        ("copro", task.get("copro_id") or "-"),
        ("created", _when(task.get("created_at"))),
        ("updated", _when(task.get("updated_at"))),
        ("g CO₂", task.get("co2_grams") if task.get("co2_grams") is not None else "-"),
    ]
    if isinstance(error, dict) and error:
        fields.append(("error", f"{error.get('error')}: {error.get('message')}"))
    if summary := verification_summary(task):
        fields.append(("verification", summary))
    attempts: list[tuple[object, ...]] = [
        (
            a.get("attempt"),
            a.get("node_id"),
            _when(a.get("started_at")),
            _when(a.get("ended_at")),
            a.get("outcome") or "-",
        )
        for a in _attempts(task)
    ]
    return fields, attempts


REPLICA_HEADERS = ("attempt", "node", "owner", "trusted", "verdict", "g CO₂", "flags")


def replica_rows(task: dict[str, Any]) -> list[tuple[object, ...]]:
    """`koprogo tasks ID`: the replicas its verification judged (none without a verification)."""
    v = task.get("verification")
    replicas = v.get("replicas") if isinstance(v, dict) else None
    return [
        (
            r.get("attempt"),
            r.get("node_id"),
            r.get("owner"),
            bool(r.get("trusted")),
            r.get("verdict"),
            r.get("co2_grams", 0.0),
            ", ".join(r.get("flags") or []) or "-",
        )
        for r in replicas or []
        if isinstance(r, dict)
    ]


def _when(value: object) -> str:
    """An ISO time as `2026-12-02 03:14:07` (UTC as the API gives it), `-` when there is none."""
    if not isinstance(value, str) or not value:
        return "-"
    return value.replace("T", " ").split(".")[0].removesuffix("Z").removesuffix("+00:00")


class Progress:
    """The wait's report on stderr: a line per change; on a terminal, a spinner line redrawn below them."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.frame = 0
        self.last: dict[str, Any] | None = None

    def show(self, task: dict[str, Any], elapsed_s: float) -> None:
        lines = progress_lines(self.last, task, elapsed_s)
        self.last = task
        if lines:
            self._clear()
            self.stream.write("".join(line + "\n" for line in lines))
        self.tick(elapsed_s)

    def tick(self, elapsed_s: float) -> None:
        if self.tty and self.last is not None:
            self.frame += 1
            self.stream.write("\r" + spinner_line(self.last, elapsed_s, self.frame) + "\x1b[K")
        self.stream.flush()

    def say(self, line: str) -> None:
        self._clear()
        self.stream.write(line + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
