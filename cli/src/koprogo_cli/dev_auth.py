"""Authentication for a stack on one machine: the local signing secret and the dev token.

`koprogo up` turns authentication on with a secret of its own, `<data dir>/secrets/jwt-secret`
(48 random bytes, mode 0600, made once), unless the operator configured a verifier
(`JWT_SECRET_FILE` or `JWKS_URL`), which then wins. The gateway is handed the secret's path
(`JWT_SECRET_FILE`), never the secret: a long-running service's environment is inherited by
whatever it starts and shown by tools that list processes, and this secret mints admin tokens.
For the same reason `koprogo up` refuses an operator's `JWT_SECRET`. It mints a token (read +
write for the demo copro) into `<data dir>/secrets/dev-token`, where `koprogo` commands (and a
PWA served by the stack) find it; `koprogo token` mints more with the same secret.

Production deployments do not use this: their tokens come from the KoproGo platform, and the
gateway refuses to start in production without a configured verifier.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path

from koprogo_shared.local_tokens import mint_token

# The demo chat's copro: its own id, so that it does not mix with a user's figures.
DEMO_COPRO_ID = "00000000-0000-4000-8000-00000000de00"
DEV_USER = "dev-user"
DEV_SCOPES = ("mcp:read", "mcp:write")
DEV_TOKEN_TTL = timedelta(days=30)
VERIFIER_ENV = ("JWT_SECRET", "JWT_SECRET_FILE", "JWKS_URL")


class DevAuthError(RuntimeError):
    """No local secret to mint with, or a secret file that cannot be used."""


def jwt_secret_path(data_dir: Path) -> Path:
    return data_dir / "secrets" / "jwt-secret"


def dev_token_path(data_dir: Path) -> Path:
    return data_dir / "secrets" / "dev-token"


def _write_private(path: Path, text: str, *, exclusive: bool) -> None:
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def operator_verifier(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the operator configured the gateway's verifier (JWT_SECRET_FILE, JWKS_URL or JWT_SECRET)."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in VERIFIER_ENV)


def operator_verifier_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The operator's verifier settings for the gateway `koprogo up` starts (empty: none configured).

    Raises DevAuthError for `JWT_SECRET`: the stack's services get secrets as files only.
    """
    env = os.environ if environ is None else environ
    if env.get("JWT_SECRET"):
        raise DevAuthError(
            "JWT_SECRET is set: koprogo up hands the gateway its secret as a file, never in its "
            "environment; write the secret to a file (mode 0600) and set JWT_SECRET_FILE to its path instead"
        )
    return {name: env[name] for name in ("JWT_SECRET_FILE", "JWKS_URL") if env.get(name)}


def ensure_jwt_secret(data_dir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The gateway's verifier environment: the operator's (nothing added) or the local secret's file.

    The local secret is created the first time and never rewritten, so tokens minted earlier
    keep working across restarts.
    """
    if operator_verifier(environ):
        return {}
    read_local_secret(data_dir, create=True)  # made, private and usable before the gateway reads it
    return {"JWT_SECRET_FILE": str(jwt_secret_path(data_dir))}


def read_local_secret(data_dir: Path, *, create: bool = False) -> str:
    path = jwt_secret_path(data_dir)
    if create:
        try:
            _write_private(path, secrets.token_urlsafe(48), exclusive=True)
        except FileExistsError:
            pass  # made by an earlier run
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        raise DevAuthError(
            f"no local signing secret at {path}: start the stack once with `koprogo up`"
            " (or mint with the platform's keys in production)"
        ) from None
    if len(secret) < 32:
        raise DevAuthError(f"{path} holds no usable secret (shorter than 32 characters)")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return secret


def mint_local_token(
    data_dir: Path,
    *,
    user: str,
    copros: Iterable[str],
    scopes: Iterable[str],
    ttl: timedelta,
    nodes: Iterable[str] = (),
) -> str:
    """A token signed with the stack's local secret (raises DevAuthError without one);
    `nodes`: the grid nodes its holder operates (claim `nodes`)."""
    return mint_token(
        read_local_secret(data_dir), user=user, copros=copros, scopes=scopes, ttl=ttl, nodes=nodes
    )


def write_dev_token(data_dir: Path) -> str:
    """Mint the dev token (read + write for the demo copro) and store it for the CLI and the PWA."""
    token = mint_local_token(
        data_dir, user=DEV_USER, copros=[DEMO_COPRO_ID], scopes=DEV_SCOPES, ttl=DEV_TOKEN_TTL
    )
    _write_private(dev_token_path(data_dir), token + "\n", exclusive=False)
    return token


def cli_token(data_dir: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """The token `koprogo` commands send: `KOPROGO_TOKEN`, else the stack's dev token, else none."""
    env = os.environ if environ is None else environ
    if token := env.get("KOPROGO_TOKEN"):
        return token.strip()
    try:
        return dev_token_path(data_dir).read_text().strip() or None
    except FileNotFoundError:
        return None
