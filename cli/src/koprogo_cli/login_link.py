"""`koprogo login-link`: a one-time link that signs the /mcp-chat app in, without copying a token.

The link is `<gateway>/mcp-chat/#login=<code>`. The code is an HS256 token signed with the
stack's local secret (`<data dir>/secrets/jwt-secret`, dev_auth.py) for the dev token's user,
copro and scopes, with `purpose: "login"`, a random 256-bit `jti` and a life of 10 minutes. The
app trades it once at `POST /mcp/v1/session/exchange` for a session token; the gateway refuses
a code as a bearer token, an access token as a code, and a code used or expired. After `#`, the
code never reaches a server log nor a Referer header. Only a gateway checking tokens with the
local secret exchanges codes: one configured with the operator's JWKS_URL answers 404.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from koprogo_cli.dev_auth import DEMO_COPRO_ID, DEV_SCOPES, DEV_USER, DevAuthError, read_local_secret
from koprogo_cli.instance import data_dir_of, folder_args, running_stack
from koprogo_cli.invocation import command_hint
from koprogo_shared.local_tokens import LOGIN_CODE_TTL, mint_login_code


def login_url(gateway_url: str, code: str) -> str:
    """The link that opens the chat app and signs it in: the code after `#`, never sent to a server."""
    return f"{gateway_url.rstrip('/')}/mcp-chat/#login={code}"


def dev_login_url(data_dir: Path, gateway_url: str) -> str:
    """A fresh link for the dev token's user (read + write for the demo copro); DevAuthError without
    the stack's local secret."""
    code = mint_login_code(
        read_local_secret(data_dir), user=DEV_USER, copros=[DEMO_COPRO_ID], scopes=DEV_SCOPES
    )
    return login_url(gateway_url, code)


def cmd_login_link(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    record = running_stack(data_dir)
    if record is None or not record.gateway_url:
        print(
            f"koprogo login-link: no stack is running on {data_dir}"
            + ("" if record is None else " yet (it is starting: try again in a moment)")
            + f"; start one with `{command_hint('up', *folder_args(data_dir))}`",
            file=sys.stderr,
        )
        return 1
    try:
        url = dev_login_url(data_dir, record.gateway_url)
    except DevAuthError as exc:
        print(f"koprogo login-link: {exc}", file=sys.stderr)
        return 2
    print(url)
    minutes = LOGIN_CODE_TTL.total_seconds() / 60
    print(
        f"# opens the chat app signed in as {DEV_USER} (read+write, copro {DEMO_COPRO_ID}); "
        f"works once, within {minutes:g} minutes",
        file=sys.stderr,
    )
    return 0


def add_login_link_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "login-link",
        help="print a one-time link that opens the chat app (/mcp-chat) signed in, for the running stack",
    )
    parser.add_argument("--data-dir", help="the stack's data folder (default ./data)")
    parser.set_defaults(func=cmd_login_link)
