"""`koprogo up` and `koprogo nats-config` read the cloud worker's deployments file themselves
(its NATS subjects), with the worker's own schema from libs, and refuse a bad file before starting."""

from __future__ import annotations

from pathlib import Path

import pytest

from koprogo_cli.stack import StackError, cloud_deployment_ids

LOCAL = """
[[deployments]]
id = "local-llama"
provider = "openai_compatible"
base_url = "http://127.0.0.1:8000/v1"
api_key_env = ""
models = { "gpt-4o-mini" = "smollm2" }
"""


def test_the_deployments_file_names_the_cloud_workers_subjects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOUD_DEPLOYMENTS_FILE", raising=False)
    assert cloud_deployment_ids() == ["anthropic", "openai"]  # the built-in defaults
    file = tmp_path / "deployments.toml"
    file.write_text(LOCAL)
    monkeypatch.setenv("CLOUD_DEPLOYMENTS_FILE", str(file))
    assert cloud_deployment_ids() == ["local-llama"]


def test_a_bad_deployments_file_stops_the_start_saying_what_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "deployments.toml"
    file.write_text(LOCAL.replace('provider = "openai_compatible"', 'provider = "nope"'))
    monkeypatch.setenv("CLOUD_DEPLOYMENTS_FILE", str(file))
    with pytest.raises(StackError, match=rf"cloud deployments: {file}: deployment local-llama: provider"):
        cloud_deployment_ids()
    # The worker's own rule travels with the schema: only openai_compatible may go without a key.
    file.write_text(LOCAL.replace('provider = "openai_compatible"', 'provider = "openai"'))
    with pytest.raises(StackError, match="only an openai_compatible deployment may have no key"):
        cloud_deployment_ids()
