"""`kv_values` when nats-py's "caught up" marker comes before the values (the race seen under load)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.js.kv import KV_DEL

from koprogo_shared.kv_snapshot import initial_entries, kv_values


@dataclass
class _Entry:
    key: str
    value: bytes | None
    delta: int
    operation: str | None = None


@dataclass
class _Watcher:
    updates_in_order: list[_Entry | None]
    stopped: bool = False

    async def updates(self, timeout: float) -> _Entry | None:
        if not self.updates_in_order:
            await asyncio.sleep(timeout)
            raise TimeoutError
        return self.updates_in_order.pop(0)

    async def stop(self) -> None:
        self.stopped = True


@dataclass
class _Status:
    values: int
    bucket: str = "TEST"


@dataclass
class _Bucket:
    """What `kv_values` uses of nats-py's KeyValue: a watch and the bucket's message count."""

    watcher: _Watcher
    stored: int
    status_calls: list[int] = field(default_factory=list)

    async def watchall(self) -> _Watcher:
        return self.watcher

    async def status(self) -> _Status:
        self.status_calls.append(self.stored)
        return _Status(self.stored)


def _read(bucket: _Bucket) -> dict[str, bytes]:
    return asyncio.run(kv_values(bucket, timeout_s=0.2))  # type: ignore[arg-type]


def test_values_that_come_after_an_early_marker_are_all_read() -> None:
    watcher = _Watcher(
        [None, _Entry("a", b"1", delta=2), _Entry("b", b"2", delta=1), _Entry("c", b"3", delta=0)]
    )
    assert _read(_Bucket(watcher, stored=3)) == {"a": b"1", "b": b"2", "c": b"3"}
    assert watcher.stopped


def test_an_empty_bucket_ends_at_its_marker() -> None:
    bucket = _Bucket(_Watcher([None]), stored=0)
    assert _read(bucket) == {}
    assert bucket.status_calls == [0]


def test_deleted_keys_are_left_out_even_when_the_last_message_is_a_delete() -> None:
    watcher = _Watcher([_Entry("a", b"1", delta=1), _Entry("b", None, delta=0, operation=KV_DEL), None])
    assert _read(_Bucket(watcher, stored=2)) == {"a": b"1"}
    assert watcher.updates_in_order == [None]  # stopped at the last entry, not at the marker


def test_a_silent_watch_ends_the_read_with_what_came() -> None:
    watcher = _Watcher([None, _Entry("a", b"1", delta=1)])
    assert _read(_Bucket(watcher, stored=2)) == {"a": b"1"}


def test_initial_entries_leave_the_watch_running_for_what_changes_next() -> None:
    """As the routing policy book reads its bucket: the early marker skipped, the watch kept."""
    watcher = _Watcher([None, _Entry("p", b"{}", delta=0), _Entry("p", b"{2}", delta=0)])
    bucket = _Bucket(watcher, stored=1)
    entries, complete = asyncio.run(initial_entries(bucket, watcher, timeout_s=0.2))  # type: ignore[arg-type]
    assert complete and [e.value for e in entries] == [b"{}"]
    assert not watcher.stopped and len(watcher.updates_in_order) == 1
