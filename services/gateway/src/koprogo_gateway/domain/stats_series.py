"""The buckets of a stats time series (`/mcp/v1/stats/series`), as plain arithmetic.

Buckets are whole UTC days or hours. A series starts with the bucket holding `from` and ends
with the one holding the last instant before `to`; rows count from `from` (inclusive) to `to`
(exclusive), so a first or last bucket cut by the range holds only its part. Without `from`, a
series is the last `DEFAULT_POINTS` whole buckets up to `to` (30 days, or 48 hours). More than
`MAX_POINTS` buckets is refused: a chart has no use for them, and the database would build them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from koprogo_gateway.domain.errors import InvalidQueryError

Bucket = Literal["day", "hour"]
BUCKET_STEP: dict[Bucket, timedelta] = {"day": timedelta(days=1), "hour": timedelta(hours=1)}
DEFAULT_POINTS: dict[Bucket, int] = {"day": 30, "hour": 48}
MAX_POINTS = 400


@dataclass(frozen=True, slots=True)
class SeriesRange:
    date_from: datetime  # inclusive
    date_to: datetime  # exclusive
    bucket: Bucket
    first_bucket: datetime
    points: int

    @property
    def step(self) -> timedelta:
        return BUCKET_STEP[self.bucket]


def bucket_start(moment: datetime, bucket: Bucket) -> datetime:
    """The start of the UTC day or hour holding `moment` (a time with a zone)."""
    utc = moment.astimezone(UTC)
    if bucket == "day":
        return utc.replace(hour=0, minute=0, second=0, microsecond=0)
    return utc.replace(minute=0, second=0, microsecond=0)


def default_from(date_to: datetime, bucket: Bucket) -> datetime:
    """The start of the last DEFAULT_POINTS whole buckets up to `date_to` (its own included)."""
    last = bucket_start(date_to - timedelta(microseconds=1), bucket)
    return last - (DEFAULT_POINTS[bucket] - 1) * BUCKET_STEP[bucket]


def series_range(date_from: datetime, date_to: datetime, bucket: Bucket) -> SeriesRange:
    """The buckets between two zoned times, `from` before `to`; InvalidQueryError (422) over MAX_POINTS."""
    if date_from >= date_to:
        raise InvalidQueryError("'from' must be before 'to'")
    step = BUCKET_STEP[bucket]
    first = bucket_start(date_from, bucket)
    points = -(-(date_to - first) // step)  # ceiling: a bucket cut by `to` still counts
    if points > MAX_POINTS:
        hint = "ask for bucket=day or a shorter range" if bucket == "hour" else "ask for a shorter range"
        raise InvalidQueryError(
            f"the range holds {points} {bucket}s; a series has at most {MAX_POINTS} points: {hint}"
        )
    return SeriesRange(date_from, date_to, bucket, first, points)
