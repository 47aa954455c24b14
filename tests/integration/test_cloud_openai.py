"""The OpenAI path for real: the OpenAI SDK against llama.cpp's OpenAI-compatible server (bundled model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, chat_outcome_adapter
from tests.integration.cloud_support import (
    cloud_settings,
    collecting,
    deployments_file,
    nats_client,
    openai_compatible_server,
    reply_subject,
    running_cloud,
    submit,
    work_item,
)

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def llama_openai_server(bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`python -m llama_cpp.server` serving the bundled model as `gpt-4o-mini`; yields its port."""
    with openai_compatible_server(bundled_model_path, MODEL, tmp_path_factory.mktemp("llama-server")) as port:
        yield port


async def test_openai_compatible_deployment_answers_with_the_servers_usage(
    clean_jetstream: str, llama_openai_server: int, tmp_path: Path
) -> None:
    table = f"""
[[deployments]]
id = "local-openai"
provider = "openai_compatible"
base_url = "http://127.0.0.1:{llama_openai_server}/v1"
api_key_env = ""
models = {{ "{MODEL}" = "{MODEL}" }}
timeout_s = 30
"""
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, {}):
        reply = reply_subject()
        work = work_item("local-openai", MODEL, "Say hello.", reply_subject=reply)
        async with collecting(nc, reply) as answers:
            await submit(js, "local-openai", work)
            outcome = chat_outcome_adapter.validate_json(await answers.next(timeout=60))
        stored = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.chat_completed(work.copro_id))
    assert isinstance(outcome, ChatCompleted), outcome
    assert outcome.execution_info.execution_type == "cloud"
    assert outcome.execution_info.node_id == "local-openai"
    assert outcome.usage.prompt_tokens > 0 and outcome.usage.completion_tokens > 0
    assert outcome.usage.total_tokens == outcome.usage.prompt_tokens + outcome.usage.completion_tokens
    assert outcome.execution_info.co2_grams > 0
    assert outcome.finish_reason in ("stop", "length")
    assert stored.data is not None
    assert ChatCompleted.model_validate_json(stored.data).id == outcome.id
