"""`/mcp/v1/site`: whether this gateway's site reaches the hub (public: it tells nothing else)."""

from __future__ import annotations

from fastapi import APIRouter

from koprogo_gateway.entrypoints.http.deps import GatewayDep
from koprogo_gateway.service_layer.site_link import SitePublic

router = APIRouter(prefix="/mcp/v1", tags=["site"])


@router.get("/site", name="site_link", response_model=SitePublic)
async def site_link(gateway: GatewayDep) -> SitePublic:
    """The site this gateway serves (`hub` or a copro's `building`) and its link to the hub: `up`, `down` (the building's leaf link is cut: local models answer, cloud models do not), or `unknown` (its nats-server's monitoring cannot be read). `since`: when the link last changed. No token needed; the hub is always `up`."""
    return gateway.site_link.current()
