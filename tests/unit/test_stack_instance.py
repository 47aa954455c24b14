"""One stack per data folder: the lock, the record a second `up` reads, a killed stack's leftovers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from koprogo_cli.instance import (
    StackLock,
    StackRecord,
    is_locked,
    leftovers,
    read_record,
    running_stack,
    terminate,
)


def test_a_second_lock_on_the_same_folder_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    first = StackLock(tmp_path)
    assert first.acquire() and is_locked(tmp_path)
    first.record(StackRecord(os.getpid(), "http://127.0.0.1:8080", [1, 2]))
    assert not StackLock(tmp_path).acquire()
    assert running_stack(tmp_path) == StackRecord(os.getpid(), "http://127.0.0.1:8080", [1, 2])
    first.release()
    assert running_stack(tmp_path) is None and StackLock(tmp_path).acquire()


@contextlib.contextmanager
def lock_held_elsewhere(data_dir: Path, then: str = "") -> Iterator[subprocess.Popen[str]]:
    """Another process that takes the folder's lock, runs `then` (Python, `lock` in scope) and keeps it."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from koprogo_cli.instance import StackLock;"
            f"lock = StackLock(Path({str(data_dir)!r})); assert lock.acquire(); {then or 'pass'};"
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_dies_with_its_process_whatever_kills_it(tmp_path: Path) -> None:
    with lock_held_elsewhere(tmp_path) as holder:
        record = running_stack(tmp_path)
        assert record is not None and record.pid == holder.pid
    # A pid file would still say "running" here; the kernel dropped the lock.
    assert running_stack(tmp_path) is None


def test_children_of_a_killed_stack_are_found_by_their_folder_and_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ours = subprocess.Popen(["sleep", "60"], env={**os.environ, "KOPROGO_DATA_DIR": str(data)})
    stranger = subprocess.Popen(["sleep", "60"])  # a recycled pid: not ours to stop
    try:
        lock = StackLock(data)
        assert lock.acquire()
        lock.record(StackRecord(os.getpid(), "", [ours.pid, stranger.pid]))
        assert leftovers(data) == []  # nothing is a leftover while its stack runs
        # The stack dies without releasing: the lock goes with its file handle, the record stays.
        assert lock._file is not None
        lock._file.close()
        lock._file = None
        assert read_record(data) is not None and not is_locked(data)
        assert leftovers(data) == [ours.pid]
        assert terminate([ours.pid], timeout=5) == []
        assert ours.wait(5) is not None and stranger.poll() is None
    finally:
        for proc in (ours, stranger):
            proc.kill()
            proc.wait()


def test_a_missing_or_garbled_record_reads_as_none(tmp_path: Path) -> None:
    assert read_record(tmp_path) is None
    (tmp_path / "koprogo.json").write_text("{not json")
    assert read_record(tmp_path) is None and leftovers(tmp_path) == []


def test_down_never_signals_a_stack_whose_record_is_not_written_yet(tmp_path: Path) -> None:
    with lock_held_elsewhere(tmp_path, then="lock.record_file.unlink()") as holder:
        assert running_stack(tmp_path) == StackRecord(0)
        down = subprocess.run(
            [sys.executable, "-m", "koprogo_cli.main", "down", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        # pid 0 would have been this test's own process group.
        assert down.returncode == 1 and "starting or stopping" in down.stderr, down.stdout + down.stderr
        assert holder.poll() is None
