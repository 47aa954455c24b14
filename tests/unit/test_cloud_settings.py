"""Deployments configuration: the TOML file, the defaults, and which deployments are available."""

from __future__ import annotations

from pathlib import Path

import pytest

from koprogo_cloud.domain.deployments import Deployment, key_status
from koprogo_cloud.domain.errors import DeploymentConfigError
from koprogo_cloud.settings import CloudSettings, load_deployments_file
from koprogo_shared import co2

GOOD = """
[[deployments]]
id = "anthropic-eu"
provider = "anthropic"
models = { "claude-3-haiku" = "claude-haiku-4-5" }
region = "eu-west-1"
intensity_g_per_kwh = 250
timeout_s = 20

[[deployments]]
id = "local-vllm"
provider = "openai_compatible"
base_url = "http://127.0.0.1:8000/v1"
api_key_env = ""
models = { "gpt-4o-mini" = "qwen2.5-7b" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deployments.toml"
    path.write_text(text)
    return path


def test_a_deployments_file_is_read(tmp_path: Path) -> None:
    deployments = load_deployments_file(write(tmp_path, GOOD))
    anthropic, local = deployments
    assert anthropic.id == "anthropic-eu"
    assert anthropic.models == {"claude-3-haiku": "claude-haiku-4-5"}
    assert anthropic.key_env == "ANTHROPIC_API_KEY"
    assert anthropic.footprint == co2.CloudFootprint(1.0, 250.0)
    assert anthropic.timeout_s == 20 and anthropic.max_retries == 2 and anthropic.cooldown_after_failures == 3
    assert local.key_env is None
    assert key_status(local, {}) == (None, None)


def test_invalid_toml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DeploymentConfigError, match="not valid TOML"):
        load_deployments_file(write(tmp_path, "[[deployments]\nid = "))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DeploymentConfigError, match="cannot read CLOUD_DEPLOYMENTS_FILE"):
        CloudSettings(cloud_deployments_file=tmp_path / "absent.toml").deployments({})


def test_an_unknown_provider_names_the_deployment_and_field(tmp_path: Path) -> None:
    text = '[[deployments]]\nid = "x"\nprovider = "cohere"\nmodels = { "a" = "b" }\n'
    with pytest.raises(DeploymentConfigError, match=r"deployment x: provider"):
        load_deployments_file(write(tmp_path, text))


def test_a_keyless_deployment_must_be_openai_compatible(tmp_path: Path) -> None:
    text = '[[deployments]]\nid = "x"\nprovider = "openai"\napi_key_env = ""\nmodels = { "a" = "b" }\n'
    with pytest.raises(DeploymentConfigError, match="only an openai_compatible deployment may have no key"):
        load_deployments_file(write(tmp_path, text))


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    one = '[[deployments]]\nid = "x"\nprovider = "openai"\nmodels = { "a" = "b" }\n'
    with pytest.raises(DeploymentConfigError, match="unique"):
        load_deployments_file(write(tmp_path, one + one))


def test_a_file_without_deployments_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeploymentConfigError, match=r"no \[\[deployments\]\]"):
        load_deployments_file(write(tmp_path, "# nothing yet\n"))


def test_without_a_file_there_is_one_default_deployment_per_provider_with_sdk_base_urls() -> None:
    deployments = CloudSettings().deployments({"OPENAI_BASE_URL": "http://proxy/v1"})
    by_id = {d.id: d for d in deployments}
    assert set(by_id) == {"anthropic", "openai"}
    assert set(by_id["anthropic"].models) == {"claude-3-opus", "claude-3-sonnet", "claude-3-haiku"}
    assert by_id["openai"].base_url == "http://proxy/v1"
    assert by_id["anthropic"].base_url is None


def test_an_unset_key_makes_a_deployment_unavailable_and_says_which_variable() -> None:
    dep = Deployment(id="a", provider="anthropic", models={"claude-3-haiku": "x"})
    assert key_status(dep, {}) == (None, "ANTHROPIC_API_KEY is not set")
    assert key_status(dep, {"ANTHROPIC_API_KEY": "sk-1"}) == ("sk-1", None)


def test_mistral_defaults_to_its_own_api() -> None:
    dep = Deployment(id="m", provider="mistral", models={"mistral-small": "mistral-small-latest"})
    assert dep.effective_base_url == "https://api.mistral.ai/v1"
    assert dep.key_env == "MISTRAL_API_KEY"


def test_a_deployment_lists_the_controls_it_passes_on_and_whether_it_streams(tmp_path: Path) -> None:
    text = GOOD.replace(
        'api_key_env = ""', 'api_key_env = ""\nfeatures = ["stop", "seed", "json_object"]\nstream = true'
    )
    _, local = load_deployments_file(write(tmp_path, text))
    assert local.effective_features == {"stop", "seed", "json_object"}
    assert local.streams


def test_an_unknown_feature_is_refused_by_name(tmp_path: Path) -> None:
    text = '[[deployments]]\nid = "x"\nprovider = "openai"\nmodels = { "a" = "b" }\nfeatures = ["seeds"]\n'
    with pytest.raises(DeploymentConfigError, match=r"deployment x: features\.0"):
        load_deployments_file(write(tmp_path, text))


def test_an_anthropic_deployment_cannot_list_what_the_messages_api_lacks(tmp_path: Path) -> None:
    text = (
        '[[deployments]]\nid = "claude"\nprovider = "anthropic"\nmodels = { "a" = "b" }\n'
        'features = ["stop", "seed", "json_schema"]\n'
    )
    with pytest.raises(DeploymentConfigError, match="Anthropic's Messages API has no json_schema, seed"):
        load_deployments_file(write(tmp_path, text))
    logprobs = text.replace('"stop", "seed", "json_schema"', '"stop", "logprobs"')
    with pytest.raises(DeploymentConfigError, match="Anthropic's Messages API has no logprobs"):
        load_deployments_file(write(tmp_path, logprobs))
