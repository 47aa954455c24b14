"""A stats query covers at most a year (issue 11, finding 8): a longer range is a 422 naming the
limit; without `from`, every answered request, as always. Pure rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from koprogo_gateway.domain.errors import InvalidQueryError
from koprogo_gateway.service_layer.stats import MAX_RANGE, checked_range

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_ten_years_are_refused_naming_the_limit() -> None:
    with pytest.raises(InvalidQueryError) as refused:
        checked_range(datetime(2016, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), NOW)
    assert refused.value.status == 422
    assert "3653 days" in refused.value.message and "at most 366 days" in refused.value.message


def test_a_from_without_to_is_measured_up_to_now() -> None:
    with pytest.raises(InvalidQueryError):
        checked_range(NOW - MAX_RANGE - timedelta(seconds=1), None, NOW)
    assert checked_range(NOW - MAX_RANGE, None, NOW) == (NOW - MAX_RANGE, None)


def test_no_from_is_every_answered_request_as_before() -> None:
    assert checked_range(None, None, NOW) == (None, None)
    assert checked_range(None, datetime(2001, 1, 1, tzinfo=UTC), NOW) == (
        None,
        datetime(2001, 1, 1, tzinfo=UTC),
    )


def test_a_time_without_a_zone_is_utc_and_compares_with_one_that_has_a_zone() -> None:
    start, _ = checked_range(
        datetime(2026, 1, 1), datetime(2026, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=1))), NOW
    )
    assert start == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidQueryError, match="before"):
        checked_range(datetime(2026, 1, 1, 1, 0), datetime(2026, 1, 1, 1, 0, tzinfo=UTC), NOW)
