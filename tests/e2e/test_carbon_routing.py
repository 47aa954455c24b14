"""Edge, cloud or fallback, by policy and carbon, on the running stack.

One edge node (the bundled model) and a cloud deployment that is a real OpenAI-compatible
server (llama.cpp's, serving the bundled model under the cloud name `gpt-4o-mini`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from koprogo_cli.ports import free_port
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import available_models, wait_until
from tests.e2e.conftest import RunningStack
from tests.integration.cloud_support import openai_compatible_server

StackFactory = Callable[..., Awaitable[RunningStack]]
CLOUD_MODEL = "gpt-4o-mini"
COPRO = "7b0c3c1e-5d1a-4c55-9f1e-2f7f3a0c9d11"


@pytest.fixture(scope="module")
def cloud_server(bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with openai_compatible_server(bundled_model_path, CLOUD_MODEL, tmp_path_factory.mktemp("cloud")) as port:
        yield port


def deployment(deployment_id: str, base_url: str, intensity_g_per_kwh: float = 300.0) -> str:
    return f"""
[[deployments]]
id = "{deployment_id}"
intensity_g_per_kwh = {intensity_g_per_kwh}
provider = "openai_compatible"
base_url = "{base_url}"
api_key_env = ""
models = {{ "{CLOUD_MODEL}" = "{CLOUD_MODEL}" }}
timeout_s = 30
max_retries = 0
"""


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Résume le PV de l'assemblée générale en une phrase."}],
        "context": f"copro:{COPRO}",
        "max_tokens": 24,
        **extra,
    }


async def available(client: httpx.AsyncClient, model: str) -> bool:
    return (await available_models(client)).get(model, False)


async def test_auto_runs_on_the_edge_then_falls_back_to_the_cloud_and_edge_only_refuses(
    stack_factory: StackFactory, cloud_server: int, tmp_path: Path
) -> None:
    file = tmp_path / "deployments.toml"
    file.write_text(deployment("local-openai", f"http://127.0.0.1:{cloud_server}/v1"))
    stack = await stack_factory(edge_nodes=1, cloud_deployments_file=file)
    client = stack.client
    await wait_until(lambda: available(client, CLOUD_MODEL), timeout=30)

    edge = await client.post("/mcp/v1/chat", json=chat("auto", routing={"policy": "prefer_edge"}))
    assert edge.status_code == 200, edge.text
    info = edge.json()["execution_info"]
    assert info["execution_type"] == "edge" and edge.json()["model"] == BUNDLED_MODEL_ID
    assert info["routing"]["policy"] == "prefer_edge" and info["routing"]["attempts"] == 1

    cloud = await client.post("/mcp/v1/chat", json=chat(CLOUD_MODEL))
    assert cloud.status_code == 200, cloud.text
    info = cloud.json()["execution_info"]
    assert info["execution_type"] == "cloud" and info["node_id"] == "local-openai"
    assert info["co2_grams"] > 0
    assert cloud.json()["usage"]["prompt_tokens"] > 0  # the provider's own count

    stack.node_stops["edge-test-0"].set()
    await wait_until(lambda: _not(available(client, BUNDLED_MODEL_ID)), timeout=15)
    fallback = await client.post("/mcp/v1/chat", json=chat("auto"))
    assert fallback.status_code == 200, fallback.text
    assert fallback.json()["execution_info"]["execution_type"] == "cloud"
    assert fallback.json()["model"] == CLOUD_MODEL

    private = await client.post("/mcp/v1/chat", json=chat("auto", routing={"policy": "edge_only"}))
    assert private.status_code == 503, private.text
    assert private.json()["error"] == "no_target_available" and "edge_only" in private.json()["message"]

    async def split() -> bool:
        stats = (await client.get("/mcp/v1/stats", params={"context": f"copro:{COPRO}"})).json()
        return (stats["edge_requests"], stats["cloud_requests"]) == (1, 2)

    await wait_until(split, timeout=15)


async def test_a_failing_deployment_falls_back_to_the_next_and_says_how_many_attempts_it_took(
    stack_factory: StackFactory, cloud_server: int, tmp_path: Path
) -> None:
    file = tmp_path / "deployments.toml"
    # Sorted first (fewer grams: the order holds even once the other's measured latency is
    # heard, which broke a tie on name order), and nothing listens there.
    file.write_text(
        deployment("a-unreachable", f"http://127.0.0.1:{free_port()}/v1", intensity_g_per_kwh=100.0)
        + deployment("local-openai", f"http://127.0.0.1:{cloud_server}/v1")
    )
    stack = await stack_factory(edge_nodes=0, cloud_deployments_file=file)
    await wait_until(lambda: available(stack.client, CLOUD_MODEL), timeout=30)
    answer = await stack.client.post("/mcp/v1/chat", json=chat(CLOUD_MODEL))
    assert answer.status_code == 200, answer.text
    info = answer.json()["execution_info"]
    assert info["node_id"] == "local-openai"
    assert info["routing"]["attempts"] == 2
    no_fallback = await stack.client.post(
        "/mcp/v1/chat", json=chat(CLOUD_MODEL, routing={"allow_fallback": False})
    )
    assert no_fallback.status_code in (502, 503, 504), no_fallback.text


async def _not(check: Awaitable[bool]) -> bool:
    return not await check
