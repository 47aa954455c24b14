"""`/mcp/v1/nodes`: the edge nodes and cloud deployments this gateway hears from (admins)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from pydantic import BaseModel

from koprogo_gateway.entrypoints.http.deps import Admin, GatewayDep

router = APIRouter(prefix="/mcp/v1", tags=["nodes"])


class EdgeNodePublic(BaseModel):
    node_id: str
    models: list[str]
    in_flight: int
    capacity: int
    tokens_per_second: float
    power_watts: float
    intensity_g_per_kwh: float
    renewable_attested: bool


class CloudDeploymentPublic(BaseModel):
    deployment: str
    provider: str
    models: list[str]
    available: bool
    unavailable_reason: str | None
    region: str | None
    intensity_g_per_kwh: float
    wh_per_1k_tokens: float
    typical_latency_ms: float


class NodesPublic(BaseModel):
    edge_nodes: list[EdgeNodePublic]
    cloud_deployments: list[CloudDeploymentPublic]


@router.get(
    "/nodes",
    response_model=NodesPublic,
    responses={
        401: {"description": "No valid bearer token (when authentication is on)."},
        403: {"description": "The token lacks `mcp:admin`."},
    },
)
async def list_nodes(gateway: GatewayDep, _caller: Admin) -> NodesPublic:
    """Live edge nodes and recently heard cloud deployments (available or not, and why), from their heartbeats."""
    now = time.monotonic()
    return NodesPublic(
        edge_nodes=[
            EdgeNodePublic(
                node_id=n.node_id,
                models=list(n.models),
                in_flight=n.in_flight,
                capacity=n.capacity,
                tokens_per_second=n.tokens_per_second,
                power_watts=n.power_watts,
                intensity_g_per_kwh=n.intensity_g_per_kwh,
                renewable_attested=n.renewable_attested,
            )
            for n in sorted(gateway.registry.alive(now), key=lambda n: n.node_id)
        ],
        cloud_deployments=[
            CloudDeploymentPublic(
                deployment=c.deployment,
                provider=c.provider,
                models=list(c.models),
                available=c.available,
                unavailable_reason=c.unavailable_reason,
                region=c.region,
                intensity_g_per_kwh=c.footprint.intensity_g_per_kwh,
                wh_per_1k_tokens=c.footprint.wh_per_1k_tokens,
                typical_latency_ms=c.typical_latency_ms,
            )
            for c in sorted(gateway.registry.cloud(now), key=lambda c: c.deployment)
        ],
    )
