"""The ledger exports how full each stream is, and the shipped alert fires before it refuses (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from koprogo_ledger.entrypoints.stream_watch import observe_streams
from koprogo_shared import subjects
from koprogo_shared.nats_connection import connect_nats, ensure_streams

pytestmark = pytest.mark.integration
ALERTS = Path(__file__).parents[2] / "deploy" / "prometheus" / "alerts.yml"


async def test_each_streams_fill_ratio_is_its_bytes_over_its_limit(clean_jetstream: str) -> None:
    nc, js = await connect_nats(clean_jetstream, "stream-fill-test")
    try:
        await ensure_streams(js)
        for i in range(20):
            await js.publish(
                subjects.chat_delivered("copro-fill"), b"x" * 1000, headers={"Nats-Msg-Id": f"f-{i}"}
            )
        ratios = await observe_streams(js)
        events = await js.stream_info(subjects.EVENTS_STREAM)
    finally:
        await nc.close()
    assert set(ratios) == {spec.name for spec in subjects.STREAMS}
    expected = events.state.bytes / events.config.max_bytes
    assert ratios[subjects.EVENTS_STREAM] == pytest.approx(expected) and expected > 0
    sample = REGISTRY.get_sample_value("koprogo_stream_fill_ratio", {"stream": subjects.EVENTS_STREAM})
    assert sample == pytest.approx(expected)


def test_the_shipped_alerts_watch_the_stream_fill_ratio() -> None:
    # That every metric a rule names is exported is tests/deploy/test_prometheus_rules.py's check.
    rules = [r for group in yaml.safe_load(ALERTS.read_text())["groups"] for r in group["rules"]]
    exprs = {r["alert"]: r["expr"] for r in rules if "alert" in r}
    assert exprs["KoproGoStreamFilling"] == "koprogo_stream_fill_ratio > 0.8"
    assert "koprogo_ledger_undelivered_answers_total" in exprs["KoproGoUndeliveredAnswers"]
