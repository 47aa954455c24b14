"""Gateway settings (environment: NATS_URL, DATABASE_URL, GATEWAY_PORT, CHAT_TIMEOUT_S, RATE_LIMIT_*, JWT_*,
JWKS_*, AUTH_DISABLED, LOGIN_*, PWA_DIR, CONTENT_KEYS*, TASK_*, S3_*, ...)."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_shared.chat_outcomes import CHAT_LIFETIME_MAX_S
from koprogo_shared.settings import ContentKeySettings

# Secrets copied from examples and templates; refused whatever their length.
PLACEHOLDER_SECRETS = frozenset({"changethis", "changeme", "secret", "your-secret-key", "dev-secret"})
MIN_SECRET_BYTES = 32


def _default_gateway_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def _default_pwa_dir() -> Path | None:
    """The repository's `web/dist` when this package runs from a checkout (an editable install, as
    `make install` makes it): the first folder above the package holding the app's `web/`."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "web" / "astro.config.mjs").is_file():
            return folder / "web" / "dist"
    return None


class GatewaySettings(ContentKeySettings):
    """The content keyring (`CONTENT_KEYS_FILE` or `CONTENT_KEYS`) opens stored contents for the
    GDPR export: required when authentication is on, unused (the export is refused) when off."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/koprogo"
    # Loopback by default: set GATEWAY_HOST=0.0.0.0 (containers do) to serve the network.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # How long a caller waits for an answer before getting 504; at most CHAT_LIFETIME_MAX_S (540),
    # the look-back of a cloud worker's search for an earlier run's answer.
    chat_timeout_s: float = Field(default=120.0, gt=0, le=CHAT_LIFETIME_MAX_S)
    gateway_id: str = Field(default_factory=_default_gateway_id)
    db_pool_max: int = 10
    # What each node's NATS key was minted for (`<keys>/roster.json`, as the router reads it): a
    # heartbeat claiming other models or pools is refused, so `/mcp/v1/models` shows no model a
    # node cannot serve. Unset: only the heartbeat's subject is checked (a NATS server without keys).
    node_roster_file: Path | None = None
    # A chat whose first target is a cloud deployment (or an edge pool, as `gateway_routes_edge_pools`
    # allows) is routed here and stored once, for its workers (GATEWAY_ROUTES_CLOUD, named before
    # the edge pools were; `service_layer/chat_routing.py`); false: the router routes every chat. Never on a building's gateway (its router sends cloud work to the hub).
    # It decides by the routers' own defaults as they store them (`routing.policy_book`).
    gateway_routes_cloud: bool = True
    # The edge pools whose chats it routes the same way (GATEWAY_ROUTES_EDGE_POOLS): `copro`, a
    # copro's own nodes (`koprogo node join --copro`); `all`, the shared pool too; `none`. A chat
    # routed here reaches the nodes as the stored request, with its user id, which the router's
    # work item leaves out: the shared pool's nodes, volunteers serving every copro, get it only
    # when the operator says they are its own (`all`; `koprogo up`'s one-machine stack does).
    gateway_routes_edge_pools: Literal["copro", "all", "none"] = "copro"

    # Rate limits: chats per window per copro, and every authenticated request per user (the user
    # policy applies when authentication is on); 0 switches a policy off.
    rate_limit_per_copro: int = Field(default=1000, ge=0)
    rate_limit_per_user: int = Field(default=100, ge=0)
    rate_limit_window_s: int = Field(default=60, ge=1, le=86400)
    # When the counters' store (NATS JetStream KV) cannot be reached: refuse with 503 (false)
    # or let requests through unlimited (true).
    rate_limit_fail_open: bool = False
    # How long one counter read or write may take before the store counts as unreachable.
    rate_limit_store_timeout_s: float = Field(default=1.0, gt=0)

    # How long one read or write of the copros' routing policies may take before the store
    # (NATS JetStream KV) counts as unreachable (503).
    routing_policy_store_timeout_s: float = Field(default=2.0, gt=0)

    # Limits on input: the body is refused with 413 before it is parsed, the rest with 422.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    chat_max_messages: int = Field(default=256, ge=1)
    chat_max_message_chars: int = Field(default=200_000, ge=1)
    chat_max_total_chars: int = Field(default=400_000, ge=1)

    # Grid tasks: a document's size (a larger one is a 413), and how long a task may wait for a node.
    task_document_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    task_ttl_s: float = Field(default=86400.0, gt=0)
    # `input_data` without its document, which travels inside the TaskSubmitted event.
    task_parameters_max_bytes: int = Field(default=512 * 1024, ge=1024)
    # The operator's S3-compatible store, read for `input_data.document_url: s3://bucket/key` (only
    # the buckets listed, comma-separated); unset: such URLs are refused.
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_allowed_buckets: str = ""

    # Authentication: closed by default. A verifier is required: JWT_SECRET_FILE (a file holding
    # the HS256 secret; JWT_SECRET, the secret itself, is accepted too) or JWKS_URL (RS256/ES256).
    # Without one the gateway refuses to start, unless AUTH_DISABLED=true says on purpose that
    # every caller is to be served as an admin (development only: production refuses it).
    # AUTH_DISABLED never switches a configured verifier off.
    environment: Literal["development", "production"] = "development"
    jwt_secret: SecretStr | None = None
    jwt_secret_file: Path | None = None
    jwks_url: str | None = None
    auth_disabled: bool = False
    jwt_issuer: str = "koprogo"
    jwt_audience: str = "koprogo-symbiose"
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=300)
    # How long the JWKS keys are cached before they are fetched again.
    jwks_cache_s: int = Field(default=300, ge=1)
    # While the JWKS cannot be fetched (a building offline), the last key set fetched is used
    # until it is this old (0: never); kept in JWKS_CACHE_FILE too when set, so a gateway started
    # offline has it. Unset: in memory only.
    jwks_offline_max_age_s: int = Field(default=86400, ge=0)
    jwks_cache_file: Path | None = None
    # One-time login links (`koprogo login-link`): `POST /mcp/v1/session/exchange` trades a code for a
    # session token lasting LOGIN_SESSION_TTL_S. Only with an HS256 secret (the gateway signs the
    # session with it); with JWKS_URL or no verifier the exchange answers 404 whatever this says.
    login_links_enabled: bool = True
    login_session_ttl_s: int = Field(default=8 * 3600, ge=60, le=30 * 86400)

    # The built /mcp-chat app (`cd web && npm ci && npm run build` writes web/dist); unset: the
    # checkout's web/dist, if this package runs from one. Not built: /mcp-chat answers 503 saying so.
    pwa_dir: Path | None = Field(default_factory=_default_pwa_dir)

    # Where this gateway runs (docs/building-offline.md): `hub`, or a copro's `building`, whose
    # nats-server is a leaf node of the hub's. A building's gateway reads its leaf link from that
    # server's HTTP monitoring (NATS_MONITOR_URL, e.g. http://127.0.0.1:8222), for /mcp/v1/site.
    site: Literal["hub", "building"] = "hub"
    nats_monitor_url: str | None = None
    # A building's copro (BUILDING_COPRO, required with SITE=building): its gateway takes this
    # copro's chats only, and no grid tasks (the hub takes only the building's copro's events).
    building_copro: str | None = None

    @field_validator(
        "jwt_secret",
        "jwt_secret_file",
        "jwks_url",
        "jwks_cache_file",
        "s3_endpoint_url",
        "s3_access_key_id",
        "s3_secret_access_key",
        "pwa_dir",
        mode="before",
    )
    @classmethod
    def _empty_auth_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("nats_monitor_url", mode="before")
    @classmethod
    def _empty_monitor_url_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _building_has_a_monitor(self) -> Self:
        if self.site == "building" and not self.building_copro:
            raise ValueError("SITE=building needs BUILDING_COPRO, the copro the building serves")
        if self.site == "building" and self.nats_monitor_url is None:
            raise ValueError(
                "SITE=building needs NATS_MONITOR_URL (the building nats-server's HTTP monitoring, "
                "e.g. http://127.0.0.1:8222) to tell whether its link to the hub is up"
            )
        return self

    @model_validator(mode="after")
    def _authentication_is_sound(self) -> Self:
        if self.jwt_secret_file is not None:
            if self.jwt_secret is not None:
                raise ValueError("set JWT_SECRET_FILE or JWT_SECRET, not both")
            self.jwt_secret = SecretStr(_read_secret_file(self.jwt_secret_file))
        if self.jwt_secret is not None and self.jwks_url is not None:
            raise ValueError("set JWT_SECRET_FILE (HS256) or JWKS_URL (RS256/ES256), not both")
        if self.jwt_secret is not None:
            secret = self.jwt_secret.get_secret_value()
            if secret.strip().lower() in PLACEHOLDER_SECRETS or len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"the JWT secret is a placeholder or shorter than {MIN_SECRET_BYTES} bytes; "
                    "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                )
        verifier = self.jwt_secret is not None or self.jwks_url is not None
        if self.environment == "production":
            if not verifier:
                raise ValueError(
                    "ENVIRONMENT=production needs JWT_SECRET_FILE or JWKS_URL: the gateway does not run open"
                    + (" (AUTH_DISABLED=true is refused in production)" if self.auth_disabled else "")
                )
            if self.jwks_url is not None and not self.jwks_url.startswith("https://"):
                raise ValueError("ENVIRONMENT=production needs an https:// JWKS_URL")
        if not verifier and not self.auth_disabled:
            raise ValueError(
                "no token verifier: set JWT_SECRET_FILE (a file holding a secret of 32 bytes or more) or "
                "JWKS_URL; to serve every caller as an admin without tokens (development only), "
                "set AUTH_DISABLED=true"
            )
        return self

    @property
    def authentication_on(self) -> bool:
        return self.jwt_secret is not None or self.jwks_url is not None

    @property
    def login_links_on(self) -> bool:
        """Whether login codes are exchanged: enabled, and tokens are checked with the local HS256 secret."""
        return self.login_links_enabled and self.jwt_secret is not None

    @property
    def auth_status(self) -> Literal["on", "disabled"]:
        """What /health reports: "disabled" only when AUTH_DISABLED=true let it start without a verifier."""
        return "on" if self.authentication_on else "disabled"

    def rate_limit_policies(self) -> tuple[RateLimitPolicy | None, RateLimitPolicy | None]:
        """(copro policy, user policy); None for a policy switched off."""
        window = self.rate_limit_window_s
        copro = (
            RateLimitPolicy("copro", self.rate_limit_per_copro, window) if self.rate_limit_per_copro else None
        )
        user = RateLimitPolicy("user", self.rate_limit_per_user, window) if self.rate_limit_per_user else None
        return copro, user

    @property
    def s3_configured(self) -> bool:
        return self.s3_endpoint_url is not None or self.s3_access_key_id is not None

    @property
    def s3_buckets(self) -> frozenset[str]:
        return frozenset(b.strip() for b in self.s3_allowed_buckets.split(",") if b.strip())

    @property
    def execute_max_body_bytes(self) -> int:
        """`POST /mcp/v1/execute`'s body limit: a document in base64 (4/3 larger) or a multipart part,
        plus the rest of the body (MAX_BODY_BYTES)."""
        return max(self.max_body_bytes, -(-self.task_document_max_bytes // 3) * 4 + self.max_body_bytes)

    def input_limits(self) -> InputLimits:
        return InputLimits(
            max_messages=self.chat_max_messages,
            max_message_chars=self.chat_max_message_chars,
            max_total_chars=self.chat_max_total_chars,
        )


def _read_secret_file(path: Path) -> str:
    """The secret in `path`, without the trailing newline an editor or `echo` leaves."""
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"JWT_SECRET_FILE {path} cannot be read: {exc.strerror}") from None
