"""The node's grid worker over fakes: assignments checked before they run, every report signed and attested.

Keys are real nkeys (the checks are the real `grid_signing`), documents and the bus are fakes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nkeys
import pytest

from koprogo_node.adapters.energy_meter import FakeEnergyMeter, MeterFile
from koprogo_node.adapters.grid import MemoryTaskCancels
from koprogo_node.service_layer.energy import EnergyProfile
from koprogo_node.service_layer.grid_worker import (
    DocumentUnavailableError,
    GridWorker,
    ReportTooLargeError,
    TaskDocuments,
    TaskReports,
)
from koprogo_node.service_layer.tasks.executor import (
    TaskCancelledError,
    TaskExecutor,
    TaskInputError,
    TaskOutput,
    TaskRun,
)
from koprogo_shared import grid_signing as g
from koprogo_shared.task_events import DocumentRef, TaskAssignment, TaskResultReported, TaskStarted


def _signer() -> g.Signer:
    return g.Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


SCHEDULER = _signer()
NODE = _signer()
NODE_ID = "node-a"
TASK_ID = str(uuid.UUID(int=1))


class FakeDocuments(TaskDocuments):
    def __init__(self, documents: dict[str, bytes] | None = None) -> None:
        self.documents = documents or {}

    async def read(self, ref: DocumentRef) -> bytes:
        if ref.object_name not in self.documents:
            raise DocumentUnavailableError(f"{ref.object_name} is gone")
        return self.documents[ref.object_name]


class FakeReports(TaskReports):
    """Keeps what the node published; `too_large` refuses reports whose result is not None."""

    def __init__(self, too_large: bool = False) -> None:
        self.started_events: list[TaskStarted] = []
        self.reports: list[TaskResultReported] = []
        self.too_large = too_large

    async def started(self, event: TaskStarted, copro_id: str | None) -> None:
        self.started_events.append(event)

    async def reported(self, event: TaskResultReported, copro_id: str | None) -> None:
        if self.too_large and event.result is not None:
            raise ReportTooLargeError("2 MB over the server's max_payload")
        self.reports.append(event)


class Forecast(TaskExecutor):
    """Answers with fixed numbers after `seconds`; raises what it is told to."""

    task_type = "predict_expenses"

    def __init__(self, seconds: float = 0.0, raises: Exception | None = None) -> None:
        self.seconds = seconds
        self.raises = raises
        self.runs = 0
        self.on_run: Any = None

    async def run(self, run: TaskRun) -> TaskOutput:
        self.runs += 1
        if self.on_run is not None:
            self.on_run()
        if self.seconds:
            await asyncio.sleep(self.seconds)
        if run.cancelled.is_set():
            raise TaskCancelledError()
        if self.raises is not None:
            raise self.raises
        return TaskOutput({"total": [{"month": "2025-01", "mean": 1512.5}], "echo": run.parameters}, 0, 0)


def _assignment(
    *,
    task_id: str = TASK_ID,
    node_id: str = NODE_ID,
    signer: g.Signer | None = SCHEDULER,
    parameters: dict[str, Any] | None = None,
    deadline_s: float = 60.0,
) -> TaskAssignment:
    unsigned = TaskAssignment(
        task_id=task_id,
        copro_id="c1",
        task_type="predict_expenses",
        attempt=1,
        parameters={"horizon_months": 3} if parameters is None else parameters,
        document=None,
        deadline=datetime.now(UTC) + timedelta(seconds=deadline_s),
    )
    return unsigned if signer is None else g.sign_assignment(signer, unsigned, node_id)


def _worker(
    executor: TaskExecutor | None = None,
    reports: FakeReports | None = None,
    **kw: Any,
) -> tuple[GridWorker, FakeReports]:
    reports = reports or FakeReports()
    worker = GridWorker(
        NODE_ID,
        f"koprogo/node/{NODE_ID}",
        {"predict_expenses": executor or Forecast()},
        FakeDocuments(),
        reports,
        kw.pop("cancels", MemoryTaskCancels()),
        signer=kw.pop("signer", NODE),
        scheduler_key=kw.pop("scheduler_key", SCHEDULER.public_key),
        **kw,
    )
    return worker, reports


def _believed(
    report: TaskResultReported, assignment: TaskAssignment, key: str = NODE.public_key
) -> str | None:
    """What the scheduler would say of the report, after it crossed the bus as JSON."""
    received = TaskResultReported.model_validate_json(report.model_dump_json())
    return g.report_refusal(received, key, g.assignment_digest(assignment))


# ----- assignments -----------------------------------------------------------------------------


async def test_a_signed_assignment_runs_and_its_report_is_the_node_s_signed_word() -> None:
    worker, reports = _worker()
    a = _assignment()
    report = await worker.run(a)
    assert report is not None and reports.reports == [report]
    assert len(reports.started_events) == 1
    assert report.outcome == "completed" and report.signer == NODE.public_key
    assert report.assignment_digest == g.assignment_digest(a)
    assert _believed(report, a) is None
    assert worker.public_key == NODE.public_key and not worker.refusals


async def test_without_a_scheduler_key_the_assignment_s_own_signer_is_believed() -> None:
    worker, _ = _worker(scheduler_key=None)
    report = await worker.run(_assignment())
    assert report is not None and report.outcome == "completed"


@pytest.mark.parametrize(
    ("assignment", "reason"),
    [
        (_assignment(signer=None), "unsigned_assignment"),
        (_assignment(signer=NODE), "assignment_not_from_the_scheduler"),
        (_assignment(node_id="node-b"), "assignment_for_another_node"),
        (
            _assignment().model_copy(update={"parameters": {"horizon_months": 12}}),
            "input_digest_mismatch",
        ),
        (
            _assignment().model_copy(update={"deadline": datetime(2030, 1, 1, tzinfo=UTC)}),
            "bad_assignment_signature",
        ),
    ],
)
async def test_a_refused_assignment_is_not_run_not_started_not_reported_but_counted(
    assignment: TaskAssignment, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    executor = Forecast()
    told: list[tuple[str, str]] = []
    worker, reports = _worker(executor, on_refusal=lambda a, why: told.append((a.task_id, why)))
    with caplog.at_level(logging.WARNING, logger="koprogo_node.service_layer.grid_worker"):
        assert await worker.run(assignment) is None
    assert executor.runs == 0 and reports.started_events == [] and reports.reports == []
    assert worker.refusals == {reason: 1} and told == [(TASK_ID, reason)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0].getMessage() and TASK_ID in warnings[0].getMessage()


# ----- every report signed and attested --------------------------------------------------------


@pytest.mark.parametrize(
    ("raises", "outcome", "error"),
    [
        (TaskInputError("row 3: amount is not a number", row=3), "input_error", "invalid_input"),
        (RuntimeError("statsmodels crashed"), "failed", "executor_error"),
    ],
)
async def test_failures_are_signed_and_attested_too(raises: Exception, outcome: str, error: str) -> None:
    worker, _ = _worker(Forecast(raises=raises))
    a = _assignment()
    report = await worker.run(a)
    assert report is not None and (report.outcome, report.error) == (outcome, error)
    assert report.result is None and report.result_digest is None
    assert report.attestation is not None and report.attestation.measured_by == "declared"
    assert _believed(report, a) is None


async def test_a_missed_deadline_is_reported_signed() -> None:
    worker, _ = _worker(Forecast(seconds=1.0))
    a = _assignment(deadline_s=0.1)
    report = await worker.run(a)
    assert report is not None and report.error == "deadline_missed"
    assert _believed(report, a) is None


async def test_a_result_too_large_is_reported_as_such_and_signed_for_what_it_says() -> None:
    worker, reports = _worker(reports=FakeReports(too_large=True))
    a = _assignment()
    report = await worker.run(a)
    assert report is not None and reports.reports == [report]
    assert (report.outcome, report.error, report.result) == ("input_error", "result_too_large", None)
    assert _believed(report, a) is None


async def test_a_cancelled_assignment_is_not_reported() -> None:
    cancels = MemoryTaskCancels()
    worker, reports = _worker(Forecast(seconds=0.5), cancels=cancels)
    running = asyncio.create_task(worker.run(_assignment()))
    await asyncio.sleep(0.1)
    cancels.cancel(TASK_ID)
    assert await running is None
    assert reports.reports == [] and len(reports.started_events) == 1


async def test_a_worker_without_signer_leaves_its_reports_unsigned() -> None:
    worker, _ = _worker(signer=None)
    a = _assignment()
    report = await worker.run(a)
    assert report is not None and report.signature is None and worker.public_key is None
    assert _believed(report, a) == "unsigned_report"


async def test_a_report_altered_after_signing_is_refused_by_the_scheduler_s_check() -> None:
    worker, _ = _worker()
    a = _assignment()
    report = await worker.run(a)
    assert report is not None and report.result is not None
    altered = report.model_copy(
        update={"result": {**report.result, "total": [{"month": "2025-01", "mean": 1.0}]}}
    )
    assert _believed(altered, a) == "result_altered"
    assert _believed(report, a, key=SCHEDULER.public_key) == "signed_by_another_key"


# ----- Proof of Green --------------------------------------------------------------------------


async def test_the_declared_attestation_is_power_times_the_seconds_it_ran() -> None:
    profile = EnergyProfile(source="grid", power_watts=9.0, intensity_g_per_kwh=120.0, device_class="x86")
    worker, _ = _worker(Forecast(seconds=0.3), energy=profile)
    report = await worker.run(_assignment())
    assert report is not None and report.attestation is not None
    att = report.attestation
    assert (att.source, att.measured_by, att.power_watts, att.intensity_g_per_kwh) == (
        "grid",
        "declared",
        9.0,
        120.0,
    )
    assert (att.solar_share, att.device_class) == (0.0, "x86")
    assert att.duration_s == pytest.approx(report.usage.duration_s, abs=0.002)
    assert 0.3 <= att.duration_s < 2.0
    assert att.wh == pytest.approx(9.0 * att.duration_s / 3600, rel=0.01)


async def test_a_mixed_supply_attests_its_solar_share() -> None:
    worker, _ = _worker(energy=EnergyProfile(source="mixed", solar_share=0.4))
    report = await worker.run(_assignment())
    assert report is not None and report.attestation is not None
    assert (report.attestation.source, report.attestation.solar_share) == ("mixed", 0.4)


async def test_a_meter_s_readings_before_and_after_are_attested() -> None:
    meter = FakeEnergyMeter([1000.0, 1000.125], power_watts=7.0)
    worker, _ = _worker(meter=meter)
    report = await worker.run(_assignment())
    assert report is not None and report.attestation is not None
    assert (report.attestation.measured_by, report.attestation.wh) == ("meter", 0.125)
    assert meter.reads == 2


@pytest.mark.parametrize("readings", [[None], [1000.0, None], [1000.0, 999.0]])
async def test_an_unreadable_or_reset_meter_attests_the_declared_power(readings: list[float | None]) -> None:
    worker, _ = _worker(Forecast(seconds=0.2), meter=FakeEnergyMeter(readings, power_watts=7.0))
    report = await worker.run(_assignment())
    assert report is not None and report.attestation is not None
    att = report.attestation
    assert att.measured_by == "declared"
    assert att.wh == pytest.approx(7.0 * att.duration_s / 3600, rel=0.01)


async def test_a_meter_file_is_read_before_and_after_the_attempt(tmp_path: Path) -> None:
    counter = tmp_path / "plug-wh"
    counter.write_text("2048.500\n")
    executor = Forecast()
    # The plug's exporter rewrites the counter while the task runs.
    executor.on_run = lambda: counter.write_text("2048.5125\n")
    worker, _ = _worker(executor, meter=MeterFile(counter, power_watts=7.0))
    report = await worker.run(_assignment())
    assert report is not None and report.attestation is not None
    assert report.attestation.measured_by == "meter"
    assert report.attestation.wh == pytest.approx(0.0125)


@pytest.mark.parametrize("content", [None, "n/a", "-3", "nan", "1" * 300])
async def test_a_meter_file_that_holds_no_counter_gives_way_to_the_declared_power(
    tmp_path: Path, content: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    counter = tmp_path / "plug-wh"
    if content is not None:
        counter.write_text(content)
    worker, _ = _worker(meter=MeterFile(counter, power_watts=7.0))
    with caplog.at_level(logging.WARNING):
        report = await worker.run(_assignment())
    assert report is not None and report.attestation is not None
    assert report.attestation.measured_by == "declared"
    assert any(str(counter) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
