"""The gateway believes a node's heartbeat only as far as the node's key was minted (issue 11, finding 4).

Without a roster, a node claiming a model it cannot serve made `/mcp/v1/models` say the model is
available (requests then timed out); with the roster `koprogo up` writes beside the keys, that
claim is refused, as the router refuses it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.events import NodeHeartbeat
from koprogo_shared.node_roster import NodeGrant, render_roster
from tests.conftest import available_models, wait_until
from tests.e2e.conftest import RunningStack

StackFactory = Callable[..., Awaitable[RunningStack]]
CLAIMED = "phi-2:2.7b-q4"


def beat(node_id: str, models: list[str]) -> bytes:
    return (
        NodeHeartbeat(
            source=f"koprogo/node/{node_id}",
            node_id=node_id,
            models=models,
            in_flight=0,
            capacity=1,
            tokens_per_second=10.0,
            power_watts=5.0,
            intensity_g_per_kwh=0.0,
            renewable_attested=True,
            interval_s=1.0,
        )
        .model_dump_json()
        .encode()
    )


async def test_a_heartbeat_claiming_a_model_its_key_was_not_minted_for_is_not_believed(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    roster = tmp_path / "roster.json"
    # Declared as the heartbeats below claim it: a renewable supply (an undeclared one is refused).
    green = EdgeFootprint(power_watts=5.0, intensity_g_per_kwh=0.0, renewable_attested=True)
    roster.write_text(render_roster({"pi-1": NodeGrant(frozenset({BUNDLED_MODEL_ID}), footprint=green)}))
    stack = await stack_factory(edge_nodes=0, node_roster_file=roster)
    nc = await nats.connect(stack.nats_url)
    try:
        for _ in range(3):
            # pi-1 may serve the bundled model only; pi-2 is in no roster at all.
            await nc.publish(subjects.node_heartbeat("pi-1"), beat("pi-1", [BUNDLED_MODEL_ID, CLAIMED]))
            await nc.publish(subjects.node_heartbeat("pi-2"), beat("pi-2", [CLAIMED]))
            await nc.publish(subjects.node_heartbeat("pi-1"), beat("pi-1", [BUNDLED_MODEL_ID]))
            await nc.flush()
        await wait_until(lambda: _bundled_available(stack), timeout=10)
        assert (await available_models(stack.client))[CLAIMED] is False
    finally:
        await nc.close()


async def _bundled_available(stack: RunningStack) -> bool:
    return (await available_models(stack.client)).get(BUNDLED_MODEL_ID, False)
