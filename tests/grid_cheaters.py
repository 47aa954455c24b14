"""A real `koprogo-node` grid node that cheats, for the grid's trust tests (docs/grid-trust.md).

    .venv/bin/python tests/grid_cheaters.py MODE [--] <the usual koprogo-node arguments>

It runs the node's own bootstrap (`koprogo_node.bootstrap.run_node`, settings from the same flags
and environment as `koprogo-node`), and cheats only through the grid worker hook, by wrapping what
the worker was built with:

    lazy       every executor answers at once with garbage of the right shape (the keys and types
               of a real result, values drawn from the node id and the input, so two lazy nodes
               do not agree by accident), and claims model tokens it never spent
    wrong      the real executor runs, then one compared number of its result is changed the
               same way on every node (two "wrong" nodes agree with each other: colluders)
    replay     reports are signed with a key freshly generated at start, not the node's own
               (its heartbeats still announce its own key)
    greenwash  honest results, but every attestation says solar, 0 Wh, from a meter

Never for a real grid: it logs that it cheats, on start.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import random
import re
import secrets
import sys
from collections.abc import Callable, Mapping
from typing import Any

import nkeys

from koprogo_node.bootstrap import GridWorkerHook, run_node
from koprogo_node.domain.errors import NodeError
from koprogo_node.entrypoints.cli import settings_from_args
from koprogo_node.service_layer.energy import EnergyMeter, EnergyUse
from koprogo_node.service_layer.grid_worker import GridWorker
from koprogo_node.service_layer.tasks.executor import TaskExecutor, TaskOutput, TaskRun
from koprogo_shared.grid_signing import Signer
from koprogo_shared.logging_setup import configure_logging
from koprogo_shared.service_runtime import run_until_signalled

log = logging.getLogger("koprogo_node.grid_cheaters")

MODES = ("lazy", "wrong", "replay", "greenwash")
# What a lazy node claims it spent on a model task (it spent nothing): enough to be paid per token.
LAZY_PROMPT_TOKENS = 400
LAZY_COMPLETION_TOKENS = 120
MODEL_TASK_TYPES = frozenset({"summarize_meeting", "translate_document"})
_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "syndic", "copro", "budget", "toiture", "vote")
_FIRST_NUMBER = re.compile(r"\d+")


# ----- lazy ------------------------------------------------------------------------------------


class LazyExecutor(TaskExecutor):
    """Does no work: garbage shaped like the real result, at once."""

    def __init__(self, inner: TaskExecutor, salt: str) -> None:
        self.task_type = inner.task_type  # type: ignore[misc]
        self.inner = inner
        self._salt = salt
        self.model_sha256: str | None = getattr(inner, "model_sha256", None)

    async def run(self, run: TaskRun) -> TaskOutput:
        parameters = run.parameters
        seed = json.dumps([self._salt, self.task_type, parameters], sort_keys=True, default=str).encode()
        if run.document is not None:
            seed += hashlib.sha256(run.document.data).digest()
        rng = random.Random(hashlib.sha256(seed).digest())
        result = _GARBAGE[self.task_type](rng, parameters, self.model_sha256)
        if self.task_type in MODEL_TASK_TYPES:
            return TaskOutput(result, LAZY_PROMPT_TOKENS, LAZY_COMPLETION_TOKENS)
        return TaskOutput(result)


def _prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _amount(rng: random.Random) -> float:
    return round(rng.uniform(100, 20_000), 2)


def _forecast_garbage(rng: random.Random, parameters: Mapping[str, Any], _sha: str | None) -> dict[str, Any]:
    horizon = parameters.get("horizon_months")
    horizon = horizon if isinstance(horizon, int) and 1 <= horizon <= 36 else 12

    def points() -> list[dict[str, Any]]:
        out = []
        for i in range(horizon):
            mean = _amount(rng)
            out.append(
                {
                    "month": f"{2026 + i // 12}-{i % 12 + 1:02d}",
                    "mean": mean,
                    "lower_80": round(mean * 0.9, 2),
                    "upper_80": round(mean * 1.1, 2),
                    "lower_95": round(mean * 0.8, 2),
                    "upper_95": round(mean * 1.2, 2),
                }
            )
        return out

    return {
        "horizon_months": horizon,
        "history_months": 24,
        "first_forecast_month": "2026-01",
        "method": "holt-winters",
        "categories": {"charges": {"model": "ets", "seasonal": False, "forecast": points()}},
        "total": points(),
    }


def _summary_garbage(rng: random.Random, parameters: Mapping[str, Any], sha: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "language": parameters.get("language") or "fr",
        "meeting_date": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "summary": _prose(rng, 24),
        "summary_source": "model",
        "items": [],
        "decisions": [],
        "no_vote": [],
        "amounts": [{"text": "1 000 €", "value": _amount(rng), "currency": "EUR"}],
        "dates": [],
        "summary_rejected": [],
        "model_calls": 1,
    }
    if sha is not None:
        result["model_sha256"] = sha
    return result


def _translation_garbage(
    rng: random.Random, parameters: Mapping[str, Any], sha: str | None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "text": _prose(rng, 16),
        "source_language": parameters.get("source_language") or "fr",
        "target_language": parameters.get("target_language") or "en",
        "paragraphs": 1,
        "model_calls": 1,
        "numbers_missing": [],
        "paragraphs_in_source_language": [],
    }
    if sha is not None:
        result["model_sha256"] = sha
    return result


def _invoice_garbage(rng: random.Random, _parameters: Mapping[str, Any], _sha: str | None) -> dict[str, Any]:
    excl = _amount(rng)

    def field(value: Any) -> dict[str, Any]:
        return {"value": value, "confidence": 0.9, "source": "rules"}

    return {
        "fields": {
            "supplier": field(_prose(rng, 2)),
            "invoice_number": field(f"F-{rng.randint(1000, 9999)}"),
            "total_excl_vat": field(excl),
            "vat_rate": field(21.0),
            "vat": field(round(excl * 0.21, 2)),
            "total_incl_vat": field(round(excl * 1.21, 2)),
        },
        "missing": ["supplier_vat_id", "issue_date", "due_date", "currency", "iban"],
        "checks": {"iban_checksum": "missing", "totals": "ok", "vat_rate": "ok"},
        "text_source": "pdf_text",
        "pages": 1,
    }


_GARBAGE: dict[str, Callable[[random.Random, Mapping[str, Any], str | None], dict[str, Any]]] = {
    "predict_expenses": _forecast_garbage,
    "summarize_meeting": _summary_garbage,
    "translate_document": _translation_garbage,
    "ocr_invoice": _invoice_garbage,
}


# ----- wrong -----------------------------------------------------------------------------------


class WrongExecutor(TaskExecutor):
    """Runs the real executor, then changes a number its comparator reads, deterministically."""

    def __init__(self, inner: TaskExecutor) -> None:
        self.task_type = inner.task_type  # type: ignore[misc]
        self.inner = inner
        self.model_sha256: str | None = getattr(inner, "model_sha256", None)

    async def run(self, run: TaskRun) -> TaskOutput:
        output = await self.inner.run(run)
        return dataclasses.replace(output, result=corrupted(self.task_type, output.result))


def corrupted(task_type: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """`result` with a compared amount or number changed; the same change on every node."""
    wrong = copy.deepcopy(dict(result))
    if task_type == "predict_expenses":
        for point in wrong.get("total") or []:
            point["mean"] = round(float(point["mean"]) * 1.1 + 1.0, 2)
        return wrong
    if task_type == "ocr_invoice":
        fields = wrong.setdefault("fields", {})
        total = fields.get("total_incl_vat")
        if total is not None and isinstance(total.get("value"), float):
            total["value"] = round(total["value"] + 100.0, 2)
        else:
            fields["total_incl_vat"] = {"value": 100.0, "confidence": 0.9, "source": "rules"}
        return wrong
    if task_type in MODEL_TASK_TYPES:
        text_key = "summary" if task_type == "summarize_meeting" else "text"
        text = str(wrong.get(text_key) or "")
        bumped = _FIRST_NUMBER.sub(lambda m: str(int(m.group()) + 1), text, count=1)
        wrong[text_key] = bumped if bumped != text else f"{text} 1".strip()
        for amount in wrong.get("amounts") or []:
            amount["value"] = float(amount["value"]) + 1000.0
            break
        return wrong
    raise ValueError(f"no corruption for task type {task_type!r}")


# ----- replay, greenwash -----------------------------------------------------------------------


def fresh_signer() -> Signer:
    return Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


class ZeroSolarMeter(EnergyMeter):
    """Says every attempt used nothing, as read from a meter."""

    async def start(self) -> float | None:
        return 0.0

    async def used(self, mark: float | None, seconds: float) -> EnergyUse:
        return EnergyUse(0.0, "meter")


# ----- the hook --------------------------------------------------------------------------------


def cheat(mode: str, node_id: str) -> GridWorkerHook:
    """The grid worker hook that makes a node cheat in `mode`."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")

    def hook(worker: GridWorker) -> None:
        if mode == "lazy":
            worker.executors = {t: LazyExecutor(e, node_id) for t, e in worker.executors.items()}
        elif mode == "wrong":
            worker.executors = {t: WrongExecutor(e) for t, e in worker.executors.items()}
        elif mode == "replay":
            worker.signer = fresh_signer()
        else:  # greenwash
            worker.energy = dataclasses.replace(worker.energy, source="solar", solar_share=1.0)
            worker.meter = ZeroSolarMeter()
        log.warning(
            "node %s CHEATS (%s): a test program (tests/grid_cheaters.py), never for a real grid",
            node_id,
            mode,
        )

    return hook


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in MODES:
        print(f"usage: grid_cheaters.py {{{','.join(MODES)}}} [--] <koprogo-node arguments>", file=sys.stderr)
        sys.exit(2)
    mode, rest = argv[0], argv[1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    settings = settings_from_args(rest)
    if not settings.joins_grid:
        print("grid_cheaters.py: a cheater is a grid node: pass --grid (or --grid-url)", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, "node")
    try:
        run_until_signalled(lambda stop: run_node(settings, stop, grid_hook=cheat(mode, settings.node_id)))
    except NodeError as exc:
        print(f"grid_cheaters.py: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
