"""The edge models a node can pull: where each GGUF lives, how big it is, what RAM it needs,
its pinned sha256; and the rules of a pull: where a file may come from, what it starts with.

Pure data and pure rules, no I/O. The sources are the shared catalogue's
(`koprogo_shared.catalogue`, `gguf`), so the model manager and every hint agree on what
is pullable. Sizes are the model cards' figures: the disk check uses the server's
Content-Length once the download answers, and this size only before the first request.
A source's sha256 is the publisher's digest, or None where the catalogue says "unpinned"
(a pull then needs `--allow-unpinned`, or `--sha256` to check one).

Where from (`SourcePolicy`): https only, to public addresses. Plain http and loopback only
with `allow_http_loopback` (a server on this machine: tests, a local mirror), and then
plain http to loopback only. Private, link-local (cloud metadata services), carrier-grade
NAT, multicast and unspecified addresses are refused whatever the flag: a pull is a request
the node makes on a user's word, and must not reach what only the node can reach. The URL
is checked before the first request and at every redirect; the address actually connected
to is checked before a byte is sent (a public name can resolve to an internal address).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

from koprogo_node.domain.errors import NotAGgufError, UnsafeSourceError
from koprogo_shared.catalogue import CATALOGUE, UNPINNED

_GiB = 1024**3
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

# What llama.cpp needs besides the weights (mmapped, so they count once): the KV cache at
# the node's default n_ctx 2048 (256 MiB for Llama 3 8B in f16) plus compute buffers and
# the process itself. 1 GiB covers the 7-8B models here with some margin.
RAM_HEADROOM_BYTES = 1 * _GiB


def estimated_ram_bytes(file_size_bytes: int) -> int:
    """RAM a GGUF of this size needs to be served: its weights plus the runtime's headroom."""
    return file_size_bytes + RAM_HEADROOM_BYTES


@dataclass(frozen=True, slots=True)
class EdgeModelSpec:
    """One pullable model: its catalogue id (koprogo_shared.catalogue) and its GGUF file."""

    id: str
    upstream_file: str
    size_bytes: int
    url: str
    sha256: str | None  # the pinned digest; None: unpinned (never left out by accident)

    @property
    def ram_bytes(self) -> int:
        return estimated_ram_bytes(self.size_bytes)


EDGE_MODELS: tuple[EdgeModelSpec, ...] = tuple(
    EdgeModelSpec(
        m.id,
        m.gguf.upstream_file,
        m.gguf.size_bytes,
        m.gguf.url,
        None if m.gguf.sha256 == UNPINNED else m.gguf.sha256,
    )
    for m in CATALOGUE
    if m.gguf is not None
)


def find_edge_model(model_id: str, models: tuple[EdgeModelSpec, ...] = EDGE_MODELS) -> EdgeModelSpec | None:
    """The pullable model with this id, or None."""
    return next((m for m in models if m.id == model_id), None)


def is_url(target: str) -> bool:
    """`scheme://...` (any scheme: `SourcePolicy` says which are pulled), not an id like `phi-2:2.7b-q4`."""
    return _URL.match(target) is not None


def model_id_from_url(url: str) -> str:
    """`https://host/org/repo/resolve/main/Phi-3.Q4_K_M.gguf` -> `Phi-3.Q4_K_M` (the id it is served as)."""
    name = PurePosixPath(unquote(urlparse(url).path)).name
    return name.removesuffix(".gguf") or "model"


def human_bytes(n: float) -> str:
    """`4920000000` -> `4.9 GB` (decimal units, as model cards and `df -H` give them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# Every GGUF file starts with these four bytes (the format's magic number, then its version).
GGUF_MAGIC = b"GGUF"


def check_gguf_head(head: bytes) -> None:
    """Raise NotAGgufError unless `head` (a file's first bytes) starts with the GGUF magic number."""
    if head[: len(GGUF_MAGIC)] != GGUF_MAGIC:
        raise NotAGgufError(
            f"the file is not a GGUF (it starts with {head[:16]!r}, not {GGUF_MAGIC!r}): "
            "nothing was kept; check the URL (a login or error page is often served instead)"
        )


_LOOPBACK_NAMES = frozenset({"localhost"})
_FLAG = "--allow-http-loopback"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IpAddress | None:
    """The address `text` spells (IPv4-mapped IPv6 unwrapped, a zone id dropped), or None for a name."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_public(address: IpAddress) -> bool:
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """Where a pull may fetch from (see the module docstring)."""

    allow_http_loopback: bool = False

    def check_url(self, url: str) -> None:
        """Refuse a URL by its scheme and, when its host is an address, by that address."""
        parsed = urlparse(url)
        scheme, host = parsed.scheme.lower(), parsed.hostname
        if scheme not in ("http", "https") or not host:
            raise UnsafeSourceError(f"{url!r} is not an https URL: a model is pulled over https only")
        address = _ip(host)
        if scheme == "http":
            loopback = host.lower() in _LOOPBACK_NAMES or (address is not None and address.is_loopback)
            if not (self.allow_http_loopback and loopback):
                raise UnsafeSourceError(
                    f"{url!r} is plain http: a model is pulled over https only (plain http only from "
                    f"this machine's loopback, 127.0.0.1, ::1 or localhost, with {_FLAG})"
                )
        if address is not None:
            self._check_address(scheme, host, address)

    def check_peer(self, scheme: str, host: str, peer: str) -> None:
        """Refuse the address a connection to `host` actually reached, before anything is sent."""
        address = _ip(peer)
        if address is None:
            raise UnsafeSourceError(f"{host} connected to {peer!r}, which is not an IP address: refused")
        self._check_address(scheme, host, address)

    def _check_address(self, scheme: str, host: str, address: IpAddress) -> None:
        where = host if _ip(host) == address else f"{host} ({address})"
        if address.is_loopback:
            if not self.allow_http_loopback:
                raise UnsafeSourceError(
                    f"{where} is a loopback address: refused (a server on this machine needs {_FLAG})"
                )
            return
        if scheme == "http":
            raise UnsafeSourceError(f"{where} is not loopback: plain http is allowed to loopback only")
        if not _is_public(address):
            raise UnsafeSourceError(
                f"{where} is a private, link-local or otherwise internal address: a model is pulled "
                "from a public host only"
            )
