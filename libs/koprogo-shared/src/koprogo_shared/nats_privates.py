"""What the project reads of nats-py's private attributes, in one place.

nats-py exposes no public accessor for these; a nats-py upgrade that renames one breaks only
this module (the integration tests that connect to a real server would fail at once).
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext


def client_of(js: JetStreamContext) -> NATS:
    """The connection a JetStream context was made from."""
    nc: NATS = js._nc
    return nc


def api_prefix(js: JetStreamContext) -> str:
    """The context's JetStream API prefix: `$JS.API`, or `$JS.<domain>.API` under a domain."""
    return str(getattr(js, "_prefix", "$JS.API"))


def server_info(nc: NATS) -> dict[str, Any]:
    """The INFO the server the client is connected to sent (version, domain, cluster, ...)."""
    info: dict[str, Any] = nc._server_info
    return info
