"""The gateway's HTTP series: labelled by route template (never the raw path), method and status;
refusals by error code; a streamed body timed to its end."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from koprogo_gateway.entrypoints.http.app import create_app
from koprogo_gateway.entrypoints.http.http_metrics import HttpMetrics
from koprogo_gateway.settings import GatewaySettings


def _requests(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("koprogo_gateway_http_requests_total", labels) or 0.0


def _refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("koprogo_gateway_refusals_total", {"reason": reason}) or 0.0


def test_a_request_is_counted_by_its_route_template_and_its_error_by_code() -> None:
    # No lifespan: the routes that need the gateway fail, which is an answer like another.
    client = TestClient(create_app(GatewaySettings(auth_disabled=True)), raise_server_exceptions=False)
    task_id = str(uuid.uuid4())
    before = _requests("/mcp/v1/tasks/{task_id}", "GET", "500")
    refused = _refusals("internal_error")

    assert client.get(f"/mcp/v1/tasks/{task_id}").status_code == 500

    assert _requests("/mcp/v1/tasks/{task_id}", "GET", "500") == before + 1
    assert _refusals("internal_error") == refused + 1
    paths = {s.labels.get("route") for m in REGISTRY.collect() for s in m.samples}
    assert not any(task_id in (p or "") for p in paths)


def test_a_body_route_behind_a_middleware_that_copies_the_scope_keeps_its_template() -> None:
    # json_body.py passes a copy of the scope on for a POST under /mcp/ (and hands the route back).
    client = TestClient(create_app(GatewaySettings(auth_disabled=True)), raise_server_exceptions=False)
    before = _requests("/mcp/v1/chat", "POST", "500")

    assert (
        client.post("/mcp/v1/chat", content=b"{}", headers={"content-type": "text/plain"}).status_code == 500
    )

    assert _requests("/mcp/v1/chat", "POST", "500") == before + 1


def test_a_path_no_route_matches_is_unmatched_and_an_odd_method_other() -> None:
    client = TestClient(create_app(GatewaySettings(auth_disabled=True)), raise_server_exceptions=False)
    before = _requests("unmatched", "GET", "404")
    odd = _requests("/health", "other", "405")

    assert client.get(f"/no/such/{uuid.uuid4()}").status_code == 404
    assert client.request("BREW", "/health").status_code == 405

    assert _requests("unmatched", "GET", "404") == before + 1
    assert _requests("/health", "other", "405") == odd + 1


def test_a_streamed_response_is_timed_to_its_last_byte_and_not_in_flight_after() -> None:
    async def slow_stream(_: Request) -> StreamingResponse:
        async def pieces():  # type: ignore[no-untyped-def]
            for piece in ("a", "b", "c"):
                await asyncio.sleep(0.1)
                yield piece

        return StreamingResponse(pieces())

    app = HttpMetrics(Starlette(routes=[Route("/stream/{n}", slow_stream)]))
    labels = {"route": "/stream/{n}", "method": "GET", "status": "200"}
    summed = REGISTRY.get_sample_value("koprogo_gateway_http_request_duration_seconds_sum", labels) or 0.0

    assert TestClient(app).get("/stream/7").text == "abc"

    took = REGISTRY.get_sample_value("koprogo_gateway_http_request_duration_seconds_sum", labels) - summed
    assert took >= 0.3
    assert REGISTRY.get_sample_value("koprogo_gateway_http_requests_in_flight") == 0


def test_the_chat_apps_refusals_are_counted_by_code(tmp_path: Path) -> None:
    not_built = TestClient(create_app(GatewaySettings(auth_disabled=True, pwa_dir=tmp_path / "nowhere")))
    before = _refusals("pwa_not_built")
    assert not_built.get("/mcp-chat/").status_code == 503
    assert not_built.get("/mcp-chat/", headers={"Accept": "text/html"}).status_code == 503  # the page
    assert _refusals("pwa_not_built") == before + 2

    (tmp_path / "index.html").write_text("<!DOCTYPE html><title>KoproGo</title>")
    built = TestClient(create_app(GatewaySettings(auth_disabled=True, pwa_dir=tmp_path)))
    missing = _refusals("not_found")
    got = built.get("/mcp-chat/missing.js")
    assert got.status_code == 404 and got.json()["error"] == "not_found"
    assert _refusals("not_found") == missing + 1
