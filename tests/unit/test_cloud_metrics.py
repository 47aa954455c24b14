"""The cloud worker's cooldown gauge follows the rest itself, not only the calls."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import REGISTRY

from koprogo_cloud.domain.errors import ProviderError
from tests.unit.test_cloud_inference_service import OK, FakeProvider, service, work


def _in_cooldown() -> float | None:
    return REGISTRY.get_sample_value("koprogo_cloud_in_cooldown", {"deployment": "dep"})


async def test_a_rest_that_ends_without_another_call_shows_ended_at_the_next_status() -> None:
    provider = FakeProvider(ProviderError("timeout", "t"), OK)
    svc, _, clock = service(provider, max_retries=0, cooldown_after_failures=1, cooldown_s=30)
    cooldowns = REGISTRY.get_sample_value("koprogo_cloud_cooldowns_total", {"deployment": "dep"}) or 0.0

    await svc.run("dep", work(), redelivered=False)
    assert _in_cooldown() == 1.0
    assert REGISTRY.get_sample_value("koprogo_cloud_cooldowns_total", {"deployment": "dep"}) == cooldowns + 1
    clock.now += timedelta(seconds=31)  # nothing sent to it meanwhile: the router skipped it
    svc.status("dep", 2.0)

    assert _in_cooldown() == 0.0
