"""`koprogo login-link` and `koprogo up`'s welcome: a link to /mcp-chat/ carrying a one-time code."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest

from koprogo_cli.dev_auth import DEMO_COPRO_ID, DEV_USER, read_local_secret
from koprogo_cli.instance import StackLock, StackRecord
from koprogo_cli.login_link import cmd_login_link, dev_login_url, login_url
from koprogo_cli.main import build_parser
from koprogo_cli.up_command import chat_link_line
from koprogo_shared.local_tokens import mint_login_code


def code_of(url: str) -> str:
    prefix, _, code = url.partition("#login=")
    assert prefix.endswith("/mcp-chat/"), url
    return code


def test_a_login_code_is_a_ten_minute_one_time_token_for_the_dev_user(tmp_path: Path) -> None:
    secret = read_local_secret(tmp_path, create=True)
    url = dev_login_url(tmp_path, "http://127.0.0.1:8080")
    assert url.startswith("http://127.0.0.1:8080/mcp-chat/#login=")
    claims = jwt.decode(
        code_of(url), secret, algorithms=["HS256"], audience="koprogo-symbiose", issuer="koprogo"
    )
    assert claims["purpose"] == "login"
    assert claims["sub"] == DEV_USER and claims["copros"] == [DEMO_COPRO_ID]
    assert claims["scope"] == "mcp:read mcp:write"
    assert claims["exp"] - claims["iat"] == 600
    assert len(claims["jti"]) >= 43  # 256 random bits, URL-safe base64
    # Each link is a new code.
    assert code_of(dev_login_url(tmp_path, "http://127.0.0.1:8080")) != code_of(url)


def test_the_link_puts_the_code_after_the_hash_whatever_the_gateway_url() -> None:
    code = mint_login_code("s" * 48, user="u", copros=[], scopes=["mcp:read"], now=datetime.now(UTC))
    assert login_url("http://127.0.0.1:9000/", code) == f"http://127.0.0.1:9000/mcp-chat/#login={code}"


def test_up_prints_the_link_or_says_why_there_is_none(tmp_path: Path) -> None:
    missing = chat_link_line(tmp_path, "http://127.0.0.1:8080", [])
    assert missing.startswith("Open the chat: http://127.0.0.1:8080/mcp-chat/ (no sign-in link: ")
    read_local_secret(tmp_path, create=True)
    line = chat_link_line(tmp_path, "http://127.0.0.1:8080", ["--data-dir", str(tmp_path)])
    first, second = line.splitlines()
    assert first.startswith("Open the chat: http://127.0.0.1:8080/mcp-chat/#login=ey")
    assert f"login-link --data-dir {tmp_path}" in second and "10 minutes" in second


def test_login_link_without_a_running_stack_says_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read_local_secret(tmp_path, create=True)
    assert cmd_login_link(argparse.Namespace(data_dir=str(tmp_path))) == 1
    err = capsys.readouterr().err
    assert f"no stack is running on {tmp_path}" in err and " up" in err


def test_login_link_prints_a_link_to_the_running_stacks_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read_local_secret(tmp_path, create=True)
    lock = StackLock(tmp_path)
    assert lock.acquire()
    try:
        lock.record(StackRecord(pid=1, gateway_url="http://127.0.0.1:18080"))
        args = build_parser().parse_args(["login-link", "--data-dir", str(tmp_path)])
        assert args.func(args) == 0
    finally:
        lock.release()
    out, err = capsys.readouterr()
    assert out.startswith("http://127.0.0.1:18080/mcp-chat/#login=") and out.count("\n") == 1
    assert "works once, within 10 minutes" in err


def test_login_link_without_the_local_secret_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = StackLock(tmp_path)
    assert lock.acquire()
    try:
        lock.record(StackRecord(pid=1, gateway_url="http://127.0.0.1:18080"))
        assert cmd_login_link(argparse.Namespace(data_dir=str(tmp_path))) == 2
    finally:
        lock.release()
    assert "no local signing secret" in capsys.readouterr().err
