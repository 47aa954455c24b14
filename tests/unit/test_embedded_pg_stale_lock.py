"""A crashed server's postmaster.pid naming a zombie: the start waits until it is reaped."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from koprogo_cli.embedded import EmbeddedServerError
from koprogo_cli.embedded_pg import await_reaped_postmaster
from koprogo_cli.instance import alive


def _zombie(tmp_path: Path) -> subprocess.Popen[bytes]:
    """A child that exited and that we have not reaped yet, named by a postmaster.pid."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while alive(child.pid):
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    (tmp_path / "postmaster.pid").write_text(f"{child.pid}\n{tmp_path}\n")
    return child


def test_the_start_waits_until_the_exited_server_is_reaped(tmp_path: Path) -> None:
    child = _zombie(tmp_path)
    reaper = threading.Timer(0.5, child.wait)
    reaper.start()
    started = time.monotonic()
    await_reaped_postmaster(tmp_path, timeout_s=10)
    assert time.monotonic() - started >= 0.4
    assert child.returncode == 0  # reaped by the timer, not before
    reaper.join()


def test_a_zombie_never_reaped_is_a_clear_error(tmp_path: Path) -> None:
    child = _zombie(tmp_path)
    try:
        with pytest.raises(EmbeddedServerError, match=f"process {child.pid}.*not reaped"):
            await_reaped_postmaster(tmp_path, timeout_s=0.3)
    finally:
        child.wait()


def test_a_server_gone_or_no_lock_file_does_not_wait(tmp_path: Path) -> None:
    await_reaped_postmaster(tmp_path, timeout_s=0)  # no lock file
    child = _zombie(tmp_path)
    child.wait()  # reaped: the pid names nothing now
    await_reaped_postmaster(tmp_path, timeout_s=0)
    (tmp_path / "postmaster.pid").write_text("not a pid\n")
    await_reaped_postmaster(tmp_path, timeout_s=0)
