"""`free_port` never tells two servers the same port (tests start several at once)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from koprogo_cli import ports
from koprogo_cli.ports import free_port


@pytest.fixture(autouse=True)
def own_reservations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reservations folder of the test's own (shared with the processes it starts), so that the
    thousands of ports a test reserves leave the machine's folder alone, and the others' it."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_the_ports_given_one_after_another_are_all_different_and_free() -> None:
    # The kernel's own choice repeats: among 2,000 binds of port 0 about a hundred come back twice.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # and the last one is free to bind


class _GivenAll(dict[int, None]):
    """A memory in which every port was given already."""

    def __contains__(self, port: object) -> bool:
        return True


def test_a_kernel_offering_only_given_ports_still_gets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # A narrow port range can leave fewer free ports than the memory keeps: free_port must not spin.
    monkeypatch.setattr(ports, "_GIVEN_PORTS", _GivenAll())
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_when_every_offer_is_taken_one_reserved_elsewhere_beats_one_given_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ports, "_GIVEN_PORTS", {})
    given_here = free_port()
    monkeypatch.setattr(ports, "_reserved_elsewhere", lambda port: True)
    offers = iter([given_here] * 10 + [given_here + 1])
    monkeypatch.setattr(ports, "_kernel_port", lambda: next(offers, given_here))
    assert free_port() == given_here + 1


def test_a_port_another_process_just_gave_is_not_given_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # `koprogo up` picks its services' ports in its own process, while the test that started it
    # picks others: the kernel may offer both the same one before either server binds it.
    elsewhere = int(
        subprocess.run(
            [sys.executable, "-c", "from koprogo_cli.ports import free_port; print(free_port())"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    monkeypatch.setattr(ports, "_GIVEN_PORTS", {})  # this process's memory does not know it either
    offers = iter([elsewhere])
    kernel_port = ports._kernel_port
    monkeypatch.setattr(ports, "_kernel_port", lambda: next(offers, None) or kernel_port())
    assert free_port() != elsewhere


def test_a_reservation_older_than_the_window_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    folder = ports._reservations()
    assert folder is not None
    old = time.time() - ports._RESERVED_S - 1
    os.utime(folder / str(port), (old, old))
    monkeypatch.setattr(ports, "_GIVEN_PORTS", {})
    offers = iter([port])
    kernel_port = ports._kernel_port
    monkeypatch.setattr(ports, "_kernel_port", lambda: next(offers, None) or kernel_port())
    assert free_port() == port
    assert time.time() - (folder / str(port)).stat().st_mtime < ports._RESERVED_S  # reserved anew


def test_a_reservations_folder_removed_meanwhile_is_made_again() -> None:
    # The folder is looked up once per process; one removed since (a temporary-files cleaner)
    # must not leave the process without its guard against the others.
    free_port()
    folder = ports._reservations()
    assert folder is not None
    shutil.rmtree(folder)
    free_port()  # finds it gone
    port = free_port()
    assert (folder / str(port)).exists()


def test_a_preferred_port_another_live_process_chose_is_not_chosen_again() -> None:
    # Two stacks started at once both found the grid scheduler's 8084 free, and the second one's
    # scheduler failed to bind it: the first stack's choice must count while its process lives.
    port = ports._kernel_port()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from koprogo_cli.ports import preferred_port; "
            f"print(preferred_port({port}), flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert int(holder.stdout.readline()) == port  # it took the documented port
        assert ports.preferred_port(port) != port
    finally:
        holder.communicate("")
    assert holder.returncode == 0


def test_a_preferred_port_chosen_by_a_process_that_ended_is_chosen_again() -> None:
    # A stack stopped and started again at once keeps its documented ports.
    port = ports._kernel_port()
    chosen = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from koprogo_cli.ports import preferred_port; print(preferred_port({port}))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert int(chosen) == port
    assert ports.preferred_port(port) == port
    assert ports.preferred_port(port) == port  # and this process may choose it again


def test_a_port_free_port_just_gave_is_not_preferred() -> None:
    given = free_port()
    assert ports.preferred_port(given) != given


def test_of_processes_preferring_one_port_at_once_over_an_old_reservation_one_gets_it() -> None:
    # Each finds the old reservation stale; taking it over must be one step, or two take it.
    port = ports._kernel_port()
    folder = ports._reservations()
    assert folder is not None
    (folder / str(port)).write_text("")
    old = time.time() - ports._RESERVED_S - 1
    os.utime(folder / str(port), (old, old))
    start = time.time() + 1.5  # every process imported and waiting before any of them chooses
    script = (
        "import sys, time; from koprogo_cli.ports import preferred_port; "
        f"time.sleep(max(0, {start} - time.time())); "
        f"print(preferred_port({port}), flush=True); sys.stdin.read()"
    )
    choosers = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    try:
        chosen = [int(c.stdout.readline()) for c in choosers if c.stdout is not None]
    finally:
        for c in choosers:
            c.communicate("")
    assert chosen.count(port) == 1, chosen


@pytest.mark.parametrize("junk", [b"99999999999999999999", b"9999999999", b"\xff\xfe", b"-1", b"0", b"12ab"])
def test_a_reservation_holding_no_pid_of_a_live_process_is_taken(junk: bytes) -> None:
    port = ports._kernel_port()
    folder = ports._reservations()
    assert folder is not None
    (folder / str(port)).write_bytes(junk)
    assert ports.preferred_port(port) == port
    assert (folder / str(port)).read_text() == str(os.getpid())


def test_a_folder_that_could_not_be_made_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the temporary folder should be")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))
    assert ports._reservations() is None
    blocked.unlink()
    blocked.mkdir()
    folder = ports._reservations()
    assert folder is not None and folder.parent == blocked


def test_a_process_removes_the_reservations_older_than_the_window_once() -> None:
    folder = ports._reservations()
    assert folder is not None
    old = time.time() - ports._RESERVED_S - 1
    for name in ("40001", "40002.1234.old"):
        (folder / name).write_text("")
        os.utime(folder / name, (old, old))
    (folder / "40003").write_text("")  # a reservation of the window: kept
    ports._PRUNED.discard(folder)
    given = free_port()
    assert sorted(p.name for p in folder.iterdir()) == sorted([".lock", "40003", str(given)])
    (folder / "40004").write_text("")
    os.utime(folder / "40004", (old, old))
    free_port()
    assert (folder / "40004").exists()  # once per process, not at every port


def test_a_port_this_process_preferred_is_not_given_by_free_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its server has not bound it yet: free_port must not hand it to another one.
    port = ports._kernel_port()
    assert ports.preferred_port(port) == port
    offers = iter([port])
    kernel_port = ports._kernel_port
    monkeypatch.setattr(ports, "_kernel_port", lambda: next(offers, None) or kernel_port())
    assert free_port() != port
