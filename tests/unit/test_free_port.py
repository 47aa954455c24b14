"""`free_port` never tells two servers the same port (tests start several at once)."""

from __future__ import annotations

import socket

from koprogo_cli.embedded import free_port


def test_the_ports_given_one_after_another_are_all_different_and_free() -> None:
    # The kernel's own choice repeats: among 2,000 binds of port 0 about a hundred come back twice.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # and the last one is free to bind
