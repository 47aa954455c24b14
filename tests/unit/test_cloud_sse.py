"""The OpenAI path's server-sent events reader: each event's data, as the SDK's SSE decoder gives it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from koprogo_cloud.adapters.openai_provider import _env_proxy, _lines, _sse_data


async def lines(*given: str) -> AsyncIterator[str]:
    for line in given:
        yield line


async def events(*given: str) -> list[str]:
    return [data async for data in _sse_data(lines(*given))]


async def test_each_event_gives_its_data_lines_joined_and_comments_and_other_fields_are_skipped() -> None:
    assert await events(
        ": keep-alive",
        "",
        "event: completion",
        "id: 7",
        'data: {"a":',
        "data:  1}",
        "",
        "retry: 1000",
        "",
        "data:[DONE]",
        "",
    ) == ['{"a":\n 1}', "[DONE]"]


async def test_an_event_the_end_of_the_stream_cut_before_its_blank_line_is_dropped() -> None:
    assert await events('data: {"a": 1}', "", 'data: {"b": 2}') == ['{"a": 1}']
    assert await events() == []


async def split_lines(*chunks: bytes) -> list[str]:
    async def given() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return [line async for line in _lines(given())]


async def test_lines_end_at_crlf_lf_or_cr_whatever_the_chunks_cut() -> None:
    assert await split_lines(b"data: a\r", b"\ndata: b\n\r\n", b"data: c\r\r") == [
        "data: a",
        "data: b",
        "",
        "data: c",
        "",
    ]
    assert await split_lines(b"data: last") == ["data: last"]  # the end cut it: kept for _sse_data
    assert await split_lines(b"a\rb", b"\nc\n") == ["a", "b", "c"]


async def test_lines_are_never_split_inside_the_text_and_utf8_survives_a_cut() -> None:
    text = 'data: {"content": "copropri\u00e9t\u00e9\u2028ligne\u0085"}\n'.encode()
    cut = text.index("\u00e9".encode()) + 1  # inside the two bytes of an é
    assert await split_lines(text[:cut], text[cut:]) == [text.decode().rstrip("\n")]


def test_the_proxy_is_the_environments_unless_no_proxy_covers_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert _env_proxy("https://api.openai.com/v1/chat/completions") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert _env_proxy("https://api.openai.com/v1/chat/completions") == "http://proxy.example:3128"
    assert _env_proxy("http://127.0.0.1:8000/v1/chat/completions") is None  # http, and NO_PROXY
    monkeypatch.setenv("ALL_PROXY", "http://all.example:3128")
    assert _env_proxy("http://mistral.local/v1/chat/completions") == "http://all.example:3128"
