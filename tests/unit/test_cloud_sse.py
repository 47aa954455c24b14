"""The OpenAI path's server-sent events reader: each event's data, as the SDK's SSE decoder gives it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from koprogo_cloud.adapters.openai_provider import _sse_data


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
