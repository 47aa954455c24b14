"""tests/grid_cheaters.py: each cheating behaviour wraps the real worker the way it says.

The honest side is the node's real executors (statsmodels for forecasts, a fake model for the
text tasks) and the worker's real signing; what a cheater produces is judged with the scheduler's
own comparator and the shared signature checks.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import nkeys
import pytest

from koprogo_grid.domain.comparators import agreement_key
from koprogo_node.adapters.grid import MemoryTaskCancels
from koprogo_node.adapters.inference import FakeInferenceEngine
from koprogo_node.bootstrap import build_executors
from koprogo_node.service_layer.energy import EnergyProfile
from koprogo_node.service_layer.grid_worker import GridWorker
from koprogo_node.service_layer.tasks.executor import TaskExecutor, TaskRun
from koprogo_shared import grid_signing as g
from koprogo_shared.task_events import TaskAssignment
from tests.grid_cheaters import (
    LazyExecutor,
    WrongExecutor,
    ZeroSolarMeter,
    cheat,
    corrupted,
    main,
)
from tests.unit.minutes_samples import TILLEULS
from tests.unit.test_grid_worker import FakeDocuments, FakeReports

SCHEDULER = g.Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))
NODE = g.Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))
SHA = "5e" * 32
HISTORY = [
    {"month": f"{2022 + i // 12}-{i % 12 + 1:02d}", "category": c, "amount": 900 + 40 * (i % 12) + k * 300}
    for i in range(30)
    for k, c in enumerate(("chauffage", "entretien"))
]
INPUTS: dict[str, dict[str, Any]] = {
    "predict_expenses": {"history": HISTORY, "horizon_months": 6},
    "summarize_meeting": {"text": TILLEULS.read_text(encoding="utf-8")},
    "translate_document": {"text": "Le budget 2025 est de 49 500 €.", "target_language": "en"},
}


def _honest() -> dict[str, TaskExecutor]:
    engine = FakeInferenceEngine(reply="The budget for 2025 is 49 500 euros.")
    return build_executors(list(INPUTS), engine, SHA)


def _worker(executors: dict[str, TaskExecutor] | None = None) -> tuple[GridWorker, FakeReports]:
    reports = FakeReports()
    worker = GridWorker(
        "node-x",
        "koprogo/node/node-x",
        executors or _honest(),
        FakeDocuments(),
        reports,
        MemoryTaskCancels(),
        signer=NODE,
        scheduler_key=SCHEDULER.public_key,
        energy=EnergyProfile(source="grid", power_watts=7.0, intensity_g_per_kwh=150.0),
    )
    return worker, reports


def _assignment(task_type: str = "predict_expenses") -> TaskAssignment:
    unsigned = TaskAssignment(
        task_id=str(uuid.uuid4()),
        copro_id="c1",
        task_type=task_type,  # type: ignore[arg-type]
        attempt=1,
        parameters=INPUTS[task_type],
        document=None,
        deadline=datetime.now(UTC) + timedelta(minutes=5),
    )
    return g.sign_assignment(SCHEDULER, unsigned, "node-x")


async def _key(executor: TaskExecutor, task_type: str) -> tuple[str, dict[str, Any]]:
    output = await executor.run(TaskRun(parameters=INPUTS[task_type]))
    return agreement_key(task_type, output.result), output.result


def _shape(value: Any) -> Any:
    """Keys and types, not values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


@pytest.mark.parametrize("task_type", list(INPUTS))
async def test_lazy_answers_garbage_of_the_right_shape_without_running_the_executor(task_type: str) -> None:
    honest = _honest()[task_type]
    worker, _ = _worker({task_type: honest})
    cheat("lazy", "lazy-1")(worker)
    lazy = worker.executors[task_type]
    assert isinstance(lazy, LazyExecutor) and lazy.inner is honest
    honest_key, honest_result = await _key(honest, task_type)
    lazy_key, lazy_result = await _key(lazy, task_type)
    assert lazy_key != honest_key
    assert set(lazy_result) >= set(honest_result) - {"summary_rejected"}
    if task_type == "predict_expenses":
        assert _shape(lazy_result["total"][0]) == _shape(honest_result["total"][0])
    if task_type in ("summarize_meeting", "translate_document"):
        assert lazy_result["model_sha256"] == SHA  # it claims the right model file
        output = await lazy.run(TaskRun(parameters=INPUTS[task_type]))
        assert output.prompt_tokens > 0 and output.completion_tokens > 0  # and tokens it never spent
    # Deterministic per node and input; two lazy nodes do not agree by accident.
    assert (await _key(lazy, task_type))[0] == lazy_key
    other = LazyExecutor(honest, "lazy-2")
    assert (await _key(other, task_type))[0] != lazy_key


async def test_lazy_never_calls_the_model() -> None:
    engine = FakeInferenceEngine()
    worker, _ = _worker(build_executors(["summarize_meeting"], engine, SHA))
    cheat("lazy", "lazy-1")(worker)
    report = await worker.run(_assignment("summarize_meeting"))
    assert report is not None and report.outcome == "completed"
    assert engine.calls == []


@pytest.mark.parametrize("task_type", list(INPUTS))
async def test_two_wrong_nodes_agree_with_each_other_and_never_with_the_honest_result(task_type: str) -> None:
    honest = _honest()[task_type]
    worker_a, _ = _worker({task_type: _honest()[task_type]})
    worker_b, _ = _worker({task_type: _honest()[task_type]})
    cheat("wrong", "wrong-a")(worker_a)
    cheat("wrong", "wrong-b")(worker_b)
    assert isinstance(worker_a.executors[task_type], WrongExecutor)
    honest_key, honest_result = await _key(honest, task_type)
    key_a, result_a = await _key(worker_a.executors[task_type], task_type)
    key_b, _ = await _key(worker_b.executors[task_type], task_type)
    assert key_a == key_b != honest_key
    assert set(result_a) == set(honest_result)  # the same result, one number changed


def test_the_corruption_changes_a_number_the_comparator_reads() -> None:
    invoice: dict[str, Any] = {
        "fields": {"total_incl_vat": {"value": 1512.5, "confidence": 0.9, "source": "rules"}},
        "missing": [],
        "checks": {},
        "text_source": "pdf_text",
        "pages": 1,
    }
    wrong = corrupted("ocr_invoice", invoice)
    assert wrong["fields"]["total_incl_vat"]["value"] == 1612.5
    assert invoice["fields"]["total_incl_vat"]["value"] == 1512.5  # the honest result is not touched
    assert agreement_key("ocr_invoice", wrong) != agreement_key("ocr_invoice", invoice)
    no_number = {"text": "Hello.", "source_language": "fr", "target_language": "en", "paragraphs": 1}
    assert corrupted("translate_document", no_number)["text"] == "Hello. 1"


async def test_replay_signs_with_a_fresh_key_and_the_scheduler_refuses_it() -> None:
    worker, _ = _worker()
    cheat("replay", "replay-1")(worker)
    assert worker.signer is not None and worker.signer.public_key != NODE.public_key
    a = _assignment()
    report = await worker.run(a)
    assert report is not None and report.outcome == "completed"
    assert report.signer == worker.signer.public_key
    # The scheduler knows the node by the key it announced (NODE's).
    assert g.report_refusal(report, NODE.public_key, g.assignment_digest(a)) == "signed_by_another_key"


async def test_greenwash_attests_solar_and_no_energy_with_an_honest_result() -> None:
    honest_worker, _ = _worker()
    worker, _ = _worker()
    cheat("greenwash", "green-1")(worker)
    assert isinstance(worker.meter, ZeroSolarMeter)
    honest = await honest_worker.run(_assignment())
    report = await worker.run(_assignment())
    assert honest is not None and report is not None and report.attestation is not None
    att = report.attestation
    assert (att.source, att.solar_share, att.wh, att.measured_by) == ("solar", 1.0, 0.0, "meter")
    assert agreement_key("predict_expenses", report.result or {}) == agreement_key(
        "predict_expenses", honest.result or {}
    )
    # Its own word, properly signed: only the plausibility checks can catch it.
    assert report.signer == NODE.public_key


def test_the_program_refuses_an_unknown_mode_and_a_node_off_the_grid(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sloppy", "--grid"])
    assert exited.value.code == 2 and "usage" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["lazy", "--", "--node-id", "n1"])
    assert exited.value.code == 2 and "--grid" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown mode"):
        cheat("sloppy", "n1")
