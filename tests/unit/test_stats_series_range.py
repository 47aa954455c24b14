"""The buckets of `/mcp/v1/stats/series`: UTC days or hours, cut by the range, at most 400."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from koprogo_gateway.domain.errors import InvalidQueryError
from koprogo_gateway.domain.stats_series import MAX_POINTS, bucket_start, default_from, series_range

BRUSSELS_SUMMER = timezone(timedelta(hours=2))


def test_buckets_are_utc_days_and_hours_whatever_the_zone_of_the_times() -> None:
    local = datetime(2026, 6, 2, 1, 30, tzinfo=BRUSSELS_SUMMER)  # 2026-06-01 23:30 UTC
    assert bucket_start(local, "day") == datetime(2026, 6, 1, tzinfo=UTC)
    assert bucket_start(local, "hour") == datetime(2026, 6, 1, 23, tzinfo=UTC)


def test_a_range_cut_mid_bucket_keeps_its_first_and_last_buckets() -> None:
    buckets = series_range(datetime(2026, 6, 1, 12, tzinfo=UTC), datetime(2026, 6, 4, 6, tzinfo=UTC), "day")
    assert buckets.first_bucket == datetime(2026, 6, 1, tzinfo=UTC)
    assert buckets.points == 4  # June 1 (from noon), 2, 3, 4 (until 6:00)
    exact = series_range(datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 6, 4, tzinfo=UTC), "day")
    assert exact.points == 3  # `to` is exclusive: June 4 holds nothing of the range


def test_the_default_range_is_the_last_30_days_or_48_hours_including_the_current_one() -> None:
    now = datetime(2026, 12, 2, 9, 15, tzinfo=UTC)
    days = series_range(default_from(now, "day"), now, "day")
    assert days.points == 30 and days.first_bucket == datetime(2026, 11, 3, tzinfo=UTC)
    hours = series_range(default_from(now, "hour"), now, "hour")
    assert hours.points == 48 and hours.first_bucket == datetime(2026, 11, 30, 10, tzinfo=UTC)


def test_more_than_400_points_or_an_empty_range_is_a_422() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert series_range(start, start + timedelta(hours=MAX_POINTS), "hour").points == MAX_POINTS
    with pytest.raises(InvalidQueryError) as refused:
        series_range(start, start + timedelta(hours=MAX_POINTS, minutes=1), "hour")
    assert refused.value.status == 422 and "bucket=day" in refused.value.message
    with pytest.raises(InvalidQueryError):
        series_range(start, start, "day")
