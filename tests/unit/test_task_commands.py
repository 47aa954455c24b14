"""`koprogo execute | tasks`: their arguments, the input_data they build, and what they print."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from koprogo_cli.main import build_parser
from koprogo_cli.task_progress import (
    Progress,
    TaskInputError,
    failure_message,
    final_line,
    input_data_of,
    poll_interval,
    progress_lines,
    spinner_line,
    task_detail,
    task_rows,
)

TASK_ID = "0b6f3d0e-5c1a-4f7e-9a2b-3c4d5e6f7a8b"


def task(status: str, *attempts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": TASK_ID,
        "task_type": "predict_expenses",
        "status": status,
        "attempts": list(attempts),
        **extra,
    }


def attempt(n: int, node: str, outcome: str | None = None) -> dict[str, Any]:
    return {
        "attempt": n,
        "node_id": node,
        "started_at": "2026-12-02T03:14:07.123456Z",
        "ended_at": None,
        "outcome": outcome,
    }


def test_execute_parses_a_file_repeated_params_and_the_copro() -> None:
    args = build_parser().parse_args(
        [
            "execute",
            "translate_document",
            "pv.txt",
            "--param",
            "target_language=nl",
            "--param",
            "x=1",
            "--copro",
            "c1",
        ]
    )
    assert (args.task_type, args.file, args.param, args.copro) == (
        "translate_document",
        "pv.txt",
        ["target_language=nl", "x=1"],
        "c1",
    )
    assert not args.no_wait and args.timeout is None and args.json is None


def test_execute_refuses_an_unknown_task_type_and_a_zero_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["execute", "ocr", "f.pdf"])
    assert "invalid choice: 'ocr'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["execute", "ocr_invoice", "f.pdf", "--timeout", "0"])


def test_tasks_takes_an_id_or_the_lists_filters() -> None:
    shown = build_parser().parse_args(["tasks", TASK_ID, "--json"])
    assert shown.task_id == TASK_ID and shown.json
    listed = build_parser().parse_args(
        [
            "tasks",
            "--status",
            "failed",
            "--type",
            "ocr_invoice",
            "--from",
            "2026-12-01",
            "--to",
            "2026-12-02T10:00",
        ]
    )
    assert (listed.task_id, listed.status, listed.task_type, listed.since, listed.until) == (
        None, "failed", "ocr_invoice", "2026-12-01", "2026-12-02T10:00"
    )  # fmt: skip
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tasks", "--status", "done"])


def test_params_are_json_when_they_read_as_json_else_text_and_win_over_json() -> None:
    data = input_data_of(
        '{"text": "Bonjour", "horizon_months": 12}',
        ["horizon_months=6", "target_language=nl", "flag=true", 'code="0042"', "history=[1, 2]", "note=a=b"],
    )
    assert data == {
        "text": "Bonjour",
        "horizon_months": 6,
        "target_language": "nl",
        "flag": True,
        "code": "0042",
        "history": [1, 2],
        "note": "a=b",
    }


def test_json_from_a_file_and_its_mistakes_named(tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_text('{"history": [{"month": "2024-01", "category": "eau", "amount": 12.5}]}')
    assert input_data_of(f"@{path}", [])["history"][0]["amount"] == 12.5
    with pytest.raises(TaskInputError, match=r"--json @.*missing.json: No such file"):
        input_data_of(f"@{tmp_path / 'missing.json'}", [])
    with pytest.raises(TaskInputError, match=r"--json: not valid JSON: Expecting .* \(line 1, column 2\)"):
        input_data_of("{text: 1}", [])
    with pytest.raises(TaskInputError, match="must be a JSON object"):
        input_data_of('["a"]', [])
    with pytest.raises(TaskInputError, match="use KEY=VALUE"):
        input_data_of(None, ["horizon_months"])
    with pytest.raises(TaskInputError, match="use KEY=VALUE"):
        input_data_of(None, ["=6"])
    assert input_data_of(None, []) == {}


def test_progress_says_each_change_once() -> None:
    first = task("pending")
    assert progress_lines(None, first, 0.04) == [f"task {TASK_ID}: pending (0.0 s)"]
    assert progress_lines(first, first, 0.6) == []
    assigned = task("assigned", attempt(1, "pi-1"))
    assert progress_lines(first, assigned, 0.8) == [
        f"task {TASK_ID}: attempt 1 on pi-1 (0.8 s)",
        f"task {TASK_ID}: assigned (0.8 s)",
    ]
    running = task("running", attempt(1, "pi-1"))
    assert progress_lines(assigned, running, 1.3) == [f"task {TASK_ID}: running (1.3 s)"]
    # The node died: the attempt ends, the task is queued again and taken by another node.
    retried = task("running", attempt(1, "pi-1", "node_lost"), attempt(2, "pi-2"))
    assert progress_lines(running, retried, 9.25) == [
        f"task {TASK_ID}: attempt 1 on pi-1 ended: node_lost (9.2 s)",
        f"task {TASK_ID}: attempt 2 on pi-2 (9.2 s)",
    ]
    # Both seen at once (a slow poll): the new attempt, its end, then the status.
    done = task("completed", attempt(1, "pi-1", "completed"))
    assert progress_lines(first, done, 3.0) == [
        f"task {TASK_ID}: attempt 1 on pi-1 (3.0 s)",
        f"task {TASK_ID}: attempt 1 on pi-1 ended: completed (3.0 s)",
        f"task {TASK_ID}: completed (3.0 s)",
    ]


def test_the_final_line_and_the_failure_message() -> None:
    done = task(
        "completed", attempt(1, "pi-1", "node_lost"), attempt(2, "pi-2", "completed"), co2_grams=0.000123
    )
    assert (
        final_line(done, 12.34) == f"task {TASK_ID} completed on pi-2 (2 attempts) in 12.3 s · 0.00012 g CO₂"
    )
    assert final_line(task("completed", attempt(1, "pi-1", "completed"), co2_grams=None), 1.0) == (
        f"task {TASK_ID} completed on pi-1 in 1.0 s"
    )
    failed = task(
        "failed",
        attempt(1, "pi-1", "input_error"),
        error={"error": "invalid_input", "message": "line 7: 'beaucoup' is not an amount"},
    )
    assert failure_message(failed) == (
        f"task {TASK_ID} failed: invalid_input: line 7: 'beaucoup' is not an amount (attempts: pi-1 input_error)"
    )
    assert (
        failure_message(task("expired", error={"error": "expired", "message": None}))
        == f"task {TASK_ID} expired: expired"
    )
    assert failure_message(task("cancelled", error=None)) == f"task {TASK_ID} cancelled"


def test_the_spinner_names_the_running_attempt() -> None:
    line = spinner_line(task("running", attempt(1, "pi-1", "node_lost"), attempt(2, "pi-2")), 4.56, 3)
    assert line == "⠸ running on pi-2, attempt 2 · 4.6 s"
    assert spinner_line(task("pending"), 0.0, 0) == "⠋ pending · 0.0 s"


def test_progress_writes_lines_only_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream)
    progress.show(task("pending"), 0.1)
    progress.tick(0.2)
    progress.show(task("pending"), 0.7)
    progress.show(task("running", attempt(1, "pi-1")), 1.2)
    assert stream.getvalue().splitlines() == [
        f"task {TASK_ID}: pending (0.1 s)",
        f"task {TASK_ID}: attempt 1 on pi-1 (1.2 s)",
        f"task {TASK_ID}: running (1.2 s)",
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_spinner_line_is_redrawn_under_the_change_lines() -> None:
    stream = Terminal()
    progress = Progress(stream)
    progress.show(task("pending"), 0.1)
    progress.tick(0.2)
    progress.say("done")
    assert stream.getvalue() == (
        f"\r\x1b[Ktask {TASK_ID}: pending (0.1 s)\n\r⠙ pending · 0.1 s\x1b[K\r⠹ pending · 0.2 s\x1b[K\r\x1b[Kdone\n"
    )


def test_polling_slows_down_and_stays_within_the_rate_limit() -> None:
    steps = [poll_interval(t / 10) for t in range(0, 6000)]
    assert steps == sorted(steps) and steps[0] == 0.5 and steps[-1] == 2.0
    # A ten-minute wait: looks in the first minute, well under 100 requests a minute.
    elapsed, looks = 0.0, 0
    while elapsed < 60:
        elapsed += poll_interval(elapsed)
        looks += 1
    assert looks < 60


def test_the_tables_of_tasks_and_of_one_task() -> None:
    listed = [
        task(
            "completed",
            attempt(1, "pi-1", "completed"),
            created_at="2026-12-02T03:14:07.5+00:00",
            co2_grams=0.0,
        ),
        task("pending", created_at="2026-12-02T03:15:00Z", co2_grams=None),
    ]
    assert task_rows(listed) == [
        (TASK_ID, "predict_expenses", "completed", "2026-12-02 03:14:07", 1, "pi-1", 0.0),
        (TASK_ID, "predict_expenses", "pending", "2026-12-02 03:15:00", 0, "-", "-"),
    ]
    fields, attempts = task_detail(
        task(
            "failed",
            attempt(1, "pi-1", "input_error"),
            copro_id="c1",
            created_at="2026-12-02T03:14:07+00:00",
            updated_at="2026-12-02T03:14:09+00:00",
            co2_grams=0.0,
            error={"error": "invalid_input", "message": "history[3]: negative"},
        )
    )
    assert ("status", "failed") in fields and ("copro", "c1") in fields
    assert ("error", "invalid_input: history[3]: negative") in fields
    assert attempts == [(1, "pi-1", "2026-12-02 03:14:07", "-", "input_error")]
    assert json.dumps(fields, ensure_ascii=False)  # plain values, printable as they are
