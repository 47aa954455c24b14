"""The cloud deployments file's schema: one provider account (key, base URL, region) per
deployment and the models it serves.

Configured in `CLOUD_DEPLOYMENTS_FILE` (TOML `[[deployments]]` tables) or, without one,
the built-in defaults of `default_deployments`. Read by the cloud worker (what it serves)
and by the `koprogo` CLI (the worker's NATS subjects, checked before a stack starts), which
imports no service. Whether a deployment is *available* depends on its key being set in
the environment (`key_status`); its value never leaves the worker and never appears in a
message.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from koprogo_shared import co2
from koprogo_shared.generation import ALL_FEATURES, Feature

ProviderName = Literal["anthropic", "openai", "mistral", "openai_compatible"]

# The generation controls each provider's adapter passes on, unless the file lists its own.
# OpenAI also gives each token's log probability (`logprobs`); Mistral has no `seed` (its API
# calls it `random_seed`) and no log probabilities; Anthropic's Messages API has no seed,
# penalties, JSON output modes or log probabilities; a generic OpenAI-compatible server is
# trusted with the sampling controls only: its operator lists more (llama.cpp's server also
# does json_object and logprobs, but not OpenAI's json_schema type).
DEFAULT_FEATURES: dict[str, tuple[Feature, ...]] = {
    "openai": (*ALL_FEATURES, "logprobs"),
    "mistral": (
        "stop",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "json_object",
        "json_schema",
        "tools",
    ),
    "anthropic": ("stop", "top_p", "tools"),
    "openai_compatible": ("stop", "seed", "top_p", "presence_penalty", "frequency_penalty"),
}
# What the Anthropic adapter can pass at all (the others pass every control in OpenAI's shape).
ANTHROPIC_FEATURES: frozenset[str] = frozenset(DEFAULT_FEATURES["anthropic"])

DEFAULT_API_KEY_ENV: dict[str, str] = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "openai_compatible": "OPENAI_COMPATIBLE_API_KEY",
}
MISTRAL_BASE_URL = "https://api.mistral.ai/v1"
_DEPLOYMENT_ID = re.compile(r"^[A-Za-z0-9-]+$")


class DeploymentConfigError(Exception):
    """The deployments configuration cannot be used; the message says which file and what to fix."""


class Deployment(BaseModel):
    """One provider account and the KoproGo model ids it serves (-> the provider's model names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    provider: ProviderName
    # KoproGo model id -> the provider's model name.
    models: dict[str, str] = Field(min_length=1)
    base_url: str | None = None
    # The environment variable holding the key; None: the provider's default; "" (only
    # for openai_compatible, e.g. a local llama.cpp or vLLM server): no key at all.
    api_key_env: str | None = None
    region: str | None = None
    intensity_g_per_kwh: float = Field(default=co2.DEFAULT_CLOUD_INTENSITY_G_PER_KWH, ge=0)
    wh_per_1k_tokens: float = Field(default=co2.DEFAULT_CLOUD_WH_PER_1K_TOKENS, ge=0)
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    max_retries: int = Field(default=2, ge=0, le=10)
    # First back-off delay when the provider gives no Retry-After (doubles each retry).
    retry_base_s: float = Field(default=0.5, gt=0, le=30)
    cooldown_after_failures: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=60.0, ge=0)
    # Work items of this deployment handled at once (each waits on the provider, not the CPU).
    concurrency: int = Field(default=4, ge=1, le=64)
    # `max_tokens` when the request sets none (Anthropic's Messages API requires one).
    default_max_tokens: int = Field(default=1024, ge=1)
    # The generation controls passed on to the provider (`koprogo_shared.generation.Feature`);
    # None: the provider's defaults (`DEFAULT_FEATURES`). The router sends a request only to a
    # deployment that has every feature it needs.
    features: list[Feature] | None = None
    # Streamed requests are answered token by token; None: yes, except for openai_compatible,
    # since a generic server's stream may end without the usage chunk
    # (`stream_options.include_usage`): llama-cpp-python's `llama_cpp.server` sends none, vLLM
    # and llama.cpp's own `llama-server` do. Without streaming, the answer arrives whole.
    stream: bool | None = None

    @model_validator(mode="after")
    def _coherent(self) -> Deployment:
        if not _DEPLOYMENT_ID.match(self.id):
            raise ValueError(f"deployment id {self.id!r}: only letters, digits and '-'")
        if self.api_key_env == "" and self.provider != "openai_compatible":
            raise ValueError(f"deployment {self.id!r}: only an openai_compatible deployment may have no key")
        if self.provider == "openai_compatible" and not self.base_url:
            raise ValueError(f"deployment {self.id!r}: an openai_compatible deployment needs base_url")
        if self.provider == "anthropic" and self.features is not None:
            beyond = sorted(set(self.features) - ANTHROPIC_FEATURES)
            if beyond:
                raise ValueError(
                    f"deployment {self.id!r}: Anthropic's Messages API has no {', '.join(beyond)} "
                    f"(it takes {', '.join(sorted(ANTHROPIC_FEATURES))})"
                )
        return self

    @property
    def effective_features(self) -> frozenset[str]:
        """The controls this deployment passes on: the file's list, else its provider's defaults."""
        listed = self.features if self.features is not None else DEFAULT_FEATURES[self.provider]
        return frozenset(listed)

    @property
    def streams(self) -> bool:
        """Whether streamed requests are answered token by token (else whole)."""
        return self.stream if self.stream is not None else self.provider != "openai_compatible"

    @property
    def key_env(self) -> str | None:
        """The environment variable to read the key from; None when the deployment needs no key."""
        if self.api_key_env == "":
            return None
        return self.api_key_env or DEFAULT_API_KEY_ENV[self.provider]

    @property
    def effective_base_url(self) -> str | None:
        if self.base_url:
            return self.base_url
        return MISTRAL_BASE_URL if self.provider == "mistral" else None

    @property
    def footprint(self) -> co2.CloudFootprint:
        return co2.CloudFootprint(self.wh_per_1k_tokens, self.intensity_g_per_kwh)

    @property
    def source(self) -> str:
        return f"koprogo/cloud/{self.id}"


def key_status(deployment: Deployment, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(the key, None) when usable, (None, why not) otherwise; the reason names the variable, never a value."""
    env = deployment.key_env
    if env is None:
        return None, None
    key = environ.get(env, "").strip()
    if not key:
        return None, f"{env} is not set"
    return key, None


def default_deployments(environ: Mapping[str, str]) -> list[Deployment]:
    """One deployment per provider with catalogue models; base URLs from the SDKs' own variables.

    The catalogue's Claude 3 ids map to their current successors (Anthropic retired the
    Claude 3 Opus and Sonnet snapshots); a deployments file can map them otherwise.
    """
    return [
        Deployment(
            id="anthropic",
            provider="anthropic",
            models={
                "claude-3-opus": "claude-opus-4-1",
                "claude-3-sonnet": "claude-sonnet-4-5",
                "claude-3-haiku": "claude-haiku-4-5",
            },
            base_url=environ.get("ANTHROPIC_BASE_URL") or None,
        ),
        Deployment(
            id="openai",
            provider="openai",
            models={"gpt-4o": "gpt-4o", "gpt-4o-mini": "gpt-4o-mini"},
            base_url=environ.get("OPENAI_BASE_URL") or None,
        ),
    ]


class DeploymentsFileSettings(BaseSettings):
    """Where the deployments are configured: `CLOUD_DEPLOYMENTS_FILE`, else the built-in defaults."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    # TOML with `[[deployments]]` tables; unset: the built-in defaults (`default_deployments`).
    cloud_deployments_file: Path | None = None

    @field_validator("cloud_deployments_file", mode="before")
    @classmethod
    def _no_file_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    def deployments(self, environ: Mapping[str, str] | None = None) -> list[Deployment]:
        """The configured deployments; raises DeploymentConfigError saying what to fix."""
        env = os.environ if environ is None else environ
        if self.cloud_deployments_file is None:
            return default_deployments(env)
        return load_deployments_file(self.cloud_deployments_file)


def load_deployments_file(path: Path) -> list[Deployment]:
    """Parse a deployments file: `[[deployments]]` tables of `Deployment` fields."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeploymentConfigError(f"cannot read CLOUD_DEPLOYMENTS_FILE {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeploymentConfigError(f"CLOUD_DEPLOYMENTS_FILE {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"deployments"}
    if unknown:
        raise DeploymentConfigError(
            f"{path}: unknown top-level keys {sorted(unknown)}; expected [[deployments]]"
        )
    tables = data.get("deployments")
    if not isinstance(tables, list) or not tables:
        raise DeploymentConfigError(f"{path}: no [[deployments]] table")
    deployments: list[Deployment] = []
    for index, table in enumerate(tables, start=1):
        try:
            deployments.append(Deployment.model_validate(table))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'deployment'}: {e['msg']}" for e in exc.errors()
            )
            name = table.get("id", f"#{index}") if isinstance(table, dict) else f"#{index}"
            raise DeploymentConfigError(f"{path}: deployment {name}: {problems}") from None
    ids = [d.id for d in deployments]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DeploymentConfigError(f"{path}: deployment ids must be unique, repeated: {duplicates}")
    return deployments
