"""What a gateway's caller is told when the message bus does not confirm a publish
(`chat_bus.publish_refused`, from the errors `publish_event` raises)."""

from __future__ import annotations

import nats.errors

from koprogo_gateway.adapters.chat_bus import publish_refused
from koprogo_gateway.domain.errors import BusFullError, BusUnavailableError, RequestTooLargeError
from koprogo_shared.publishing import JS_STREAM_STORE_FAILED, PUBLISH_RETRY_S, StreamFullError


def test_no_answer_within_the_retries_is_a_503_that_says_what_it_may_be() -> None:
    # A stream whose disk filled answers no publish again (tests/integration/test_jetstream_disk_full.py):
    # from the client, as from an unreachable server or a stream without a leader, a timeout.
    refused = publish_refused(nats.errors.TimeoutError())

    assert type(refused) is BusUnavailableError
    assert (refused.status, refused.error) == (503, "bus_unavailable")
    assert f"did not confirm the request within {PUBLISH_RETRY_S:g} s" in refused.message
    assert "full disk" in refused.message and "retry later" in refused.message
    assert "TimeoutError" not in refused.message
    assert publish_refused(TimeoutError()).message == refused.message


def test_a_full_stream_is_bus_full_and_names_the_stream() -> None:
    full = StreamFullError(
        code=503,
        description="maximum bytes exceeded",
        err_code=JS_STREAM_STORE_FAILED,
        stream="KOPROGO_EVENTS",
    )

    refused = publish_refused(full)

    assert isinstance(refused, BusFullError) and (refused.status, refused.error) == (503, "bus_full")
    assert "KOPROGO_EVENTS" in refused.message and "full" in refused.message


def test_a_message_too_large_for_nats_is_a_413() -> None:
    refused = publish_refused(nats.errors.MaxPayloadError())

    assert isinstance(refused, RequestTooLargeError) and refused.status == 413


def test_other_refusals_are_a_503_naming_the_error() -> None:
    for exc in (nats.errors.NoRespondersError(), nats.errors.ConnectionClosedError(), OSError("reset")):
        refused = publish_refused(exc)
        assert type(refused) is BusUnavailableError and refused.status == 503
        assert refused.message == f"the message bus did not accept the request: {type(exc).__name__}"
