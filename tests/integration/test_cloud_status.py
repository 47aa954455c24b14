"""Deployment statuses and poison work: a keyless deployment says why, bad JSON is dead-lettered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from koprogo_shared import subjects
from koprogo_shared.events import CloudDeploymentStatus, InferenceAttemptFailed
from tests.integration.cloud_support import (
    cloud_settings,
    collecting,
    deployments_file,
    nats_client,
    reply_subject,
    running_cloud,
    submit,
    work_item,
)

pytestmark = pytest.mark.integration

KEYLESS = """
[[deployments]]
id = "anthropic-nokey"
provider = "anthropic"
api_key_env = "KOPROGO_TEST_ANTHROPIC_KEY"
models = { "claude-3-haiku" = "claude-haiku-4-5" }
"""


async def test_deployment_without_key_is_announced_unavailable_naming_the_variable(
    clean_jetstream: str, tmp_path: Path
) -> None:
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, KEYLESS), status_interval_s=30)
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, {}):
        async with collecting(nc, subjects.cloud_status("anthropic-nokey")) as statuses:
            await asyncio.sleep(0.5)  # past the first status: the next one answers the announce
            await nc.publish(subjects.NODES_ANNOUNCE, b"")
            raw = await statuses.next(timeout=5)
        status = CloudDeploymentStatus.model_validate_json(raw)
        assert not status.available
        assert status.unavailable_reason == "KOPROGO_TEST_ANTHROPIC_KEY is not set"
        assert status.models == ["claude-3-haiku"] and status.provider == "anthropic"
        # What the router filters on: the controls Anthropic's adapter passes on.
        assert status.features == ["stop", "tools", "top_p"]

        async with collecting(nc, subjects.inference_attempt_failed("copro-cloud")) as failures:
            await submit(
                js,
                "anthropic-nokey",
                work_item("anthropic-nokey", "claude-3-haiku", reply_subject=reply_subject()),
            )
            failed = InferenceAttemptFailed.model_validate_json(await failures.next())
        assert (failed.status, failed.error) == (503, "deployment_unavailable")
        assert "KOPROGO_TEST_ANTHROPIC_KEY is not set" in failed.message


async def test_undecodable_work_is_dead_lettered(clean_jetstream: str, tmp_path: Path) -> None:
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, KEYLESS))
    async with nats_client(clean_jetstream) as (_nc, js), running_cloud(settings, {}):
        subject = subjects.run_inference_cloud("c1", "anthropic-nokey")
        await js.publish(subject, b"{not json", headers={"Nats-Msg-Id": "poison-1"})
        dead_subject = subjects.deadletter_for(subject)
        for _ in range(100):
            try:
                dead = await js.get_last_msg(subjects.DEADLETTER_STREAM, dead_subject)
                break
            except Exception:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("nothing was dead-lettered")
    assert dead.data == b"{not json"
    assert dead.headers is not None and dead.headers["KoproGo-Dead-Reason"].startswith("poison")


async def test_work_whose_body_names_another_copro_than_its_subject_is_dead_lettered_unrun(
    clean_jetstream: str, tmp_path: Path
) -> None:
    """A building may publish its own copro's cloud work only (its leaf user's permission names the
    subject's copro); the body's copro is what the answer is filed and billed under, so a body
    naming another copro is refused before any provider call (docs/building-offline.md)."""
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, KEYLESS))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, {}):
        work = work_item("anthropic-nokey", "claude-3-haiku", reply_subject=reply_subject())
        assert work.copro_id is not None
        subject = subjects.run_inference_cloud("someone-else", "anthropic-nokey")
        async with collecting(nc, work.reply_subject) as replies:
            await js.publish(subject, work.model_dump_json().encode(), headers={"Nats-Msg-Id": work.id})
            dead_subject = subjects.deadletter_for(subject)
            for _ in range(100):
                try:
                    dead = await js.get_last_msg(subjects.DEADLETTER_STREAM, dead_subject)
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("nothing was dead-lettered")
            await asyncio.sleep(0.5)
        assert replies.items.empty()  # not run: a keyless deployment would have answered `unavailable`
    reason = (dead.headers or {})["KoproGo-Dead-Reason"]
    assert reason.startswith("poison") and "subject and body disagree" in reason
