"""`koprogo-node models`: pull (progress, resume, sha256, refusals), list and rm, against a
real local HTTP server that serves a file the test makes; the pull's source checks (https
only, no internal host, plain http to loopback only with `--allow-http-loopback`, the GGUF
magic, pinned digests, `--allow-unpinned`); then a pulled model served with an idle
keep-alive (real llama.cpp with the bundled SmolLM2 file, real NATS)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import http.server
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from koprogo_node.adapters.host_resources import FakeHostResources
from koprogo_node.adapters.http_download import (
    Downloaded,
    HttpDownloader,
    OnProgress,
    OnStart,
)
from koprogo_node.adapters.llama_engine import LlamaEngine
from koprogo_node.adapters.on_demand_engine import OnDemandEngine
from koprogo_node.domain.controls import Sampling
from koprogo_node.domain.errors import (
    ChecksumMismatchError,
    DownloadFailedError,
    NotAGgufError,
    NotEnoughDiskError,
    NotEnoughMemoryError,
    UnpinnedModelError,
    UnsafeSourceError,
)
from koprogo_node.domain.model_catalogue import EdgeModelSpec
from koprogo_node.entrypoints.cli import main
from koprogo_node.service_layer.model_store import ModelStore
from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatMessage, NodeHeartbeat
from koprogo_shared.publishing import publish_event
from tests.integration.edge_support import (
    listening,
    nats_client,
    node_settings,
    reply_subject,
    run_inference,
    running_node,
)

# A GGUF's first four bytes are its magic number; then several read chunks, not a round number.
BODY = b"GGUF" + os.urandom(3 * 1024 * 1024 + 119)
DIGEST = hashlib.sha256(BODY).hexdigest()
# What a captive portal or a mistyped URL serves instead: the right size, the wrong kind of file.
NOT_GGUF = b"<!doctype html><title>Sign in</title>" + os.urandom(2 * 1024 * 1024)
GIB = 1024**3


@dataclass
class FileServer:
    """What the test server does and what it was asked."""

    url: str
    body: bytes = BODY
    ranges: bool = True
    drop_after: int | None = None  # cut the next response after this many body bytes
    redirect_to: str | None = None  # where /moved/... sends the client (default: url)
    range_headers: list[str | None] = field(default_factory=list)
    tls_hellos: list[str | None] = field(default_factory=list)  # the server name of each TLS ClientHello


@contextlib.contextmanager
def serving(
    state: FileServer, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> Iterator[FileServer]:
    """A file server on loopback for `state`, over http, or https with `tls`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.range_headers.append(self.headers.get("Range"))
            if self.path.startswith("/moved/"):  # as Hugging Face's resolve/ URLs do (to a CDN)
                self.send_response(302)
                self.send_header("Location", state.redirect_to or state.url)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = state.body
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if state.ranges and match:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            body = body[start:]
            if state.drop_after is not None:
                body, state.drop_after = body[: state.drop_after], None
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client refused the file on its first bytes

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    state.url = f"{scheme}://{host}:{server.server_address[1]}/files/Tiny-Model.Q4_K_M.gguf"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    with serving(FileServer(url="")) as state:
        yield state


@pytest.fixture
def tls_file_server(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FileServer]:
    """The same server over https as `localhost`, its certificate signed by a CA this process trusts
    (SSL_CERT_FILE, read by OpenSSL when the default context is made): the real TLS path of a pull."""
    folder = tmp_path_factory.mktemp("tls")
    ca_file, context = _test_ca_and_server_context(folder)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    state = FileServer(url="")

    def hello(_socket: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext) -> None:
        state.tls_hellos.append(server_name)

    context.sni_callback = hello
    with serving(state, tls=context, host="localhost"):
        yield state


def _test_ca_and_server_context(folder: Path) -> tuple[Path, ssl.SSLContext]:
    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = key(), key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("koprogo test CA"))
        .issuer_name(name("koprogo test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


def models(tmp_path: Path, *args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(["models", "--models-dir", str(tmp_path), *args])
    return int(exited.value.code or 0)


def store(
    tmp_path: Path,
    url: str,
    *,
    disk: int = 100 * GIB,
    ram: int | None = 64 * GIB,
    sha256: str | None = DIGEST,  # None: the entry is unpinned
) -> ModelStore:
    spec = EdgeModelSpec("tiny:q4", "Tiny-Model.Q4_K_M.gguf", len(BODY), url, sha256)
    # A short timeout: a request that should never be made fails fast instead of hanging.
    return ModelStore(tmp_path, FakeHostResources(disk, ram), HttpDownloader(timeout_s=3), (spec,))


def test_a_url_pull_shows_progress_checks_the_sha256_and_is_served_by_its_id(
    tmp_path: Path, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        models(
            tmp_path,
            "pull",
            file_server.url,
            "--sha256",
            DIGEST,
            "--allow-http-loopback",
        )
        == 0
    )
    out, err = capsys.readouterr()
    path = tmp_path / "Tiny-Model.Q4_K_M.gguf"
    assert out.strip() == str(path) and path.read_bytes() == BODY
    assert "100%" in err and f"sha256 verified: {DIGEST}" in err
    assert not (tmp_path / "Tiny-Model.Q4_K_M.gguf.part").exists()
    assert file_server.range_headers == [None]


def test_a_catalogue_pull_checks_its_known_digest(tmp_path: Path, file_server: FileServer) -> None:
    result = store(tmp_path, file_server.url).pull("tiny:q4", allow_http_loopback=True)
    assert result.verified and result.sha256 == DIGEST
    assert result.path == tmp_path / "tiny-q4.gguf" and result.path.read_bytes() == BODY


def test_two_ids_of_one_file_share_one_download(tmp_path: Path, file_server: FileServer) -> None:
    same = [
        EdgeModelSpec(i, "Tiny-Model.Q4_K_M.gguf", len(BODY), file_server.url, DIGEST)
        for i in ("tiny", "tiny:q4")
    ]
    models_store = ModelStore(tmp_path, FakeHostResources(100 * GIB, 64 * GIB), HttpDownloader(), tuple(same))
    first = models_store.pull("tiny", allow_http_loopback=True)
    second = models_store.pull("tiny:q4", allow_http_loopback=True)
    assert first.downloaded and not second.downloaded and second.verified
    assert file_server.range_headers == [None]  # one request in all
    assert second.path.read_bytes() == BODY and second.path.stat().st_ino == first.path.stat().st_ino
    # Removing one id leaves the other's file whole.
    models_store.remove("tiny")
    assert second.path.read_bytes() == BODY


def test_a_cut_download_resumes_with_a_range_request(
    tmp_path: Path, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    file_server.drop_after = 1_000_000
    pull = ("pull", file_server.url, "--sha256", DIGEST, "--allow-http-loopback")
    assert models(tmp_path, *pull) == 1
    assert "run the same command again to resume" in capsys.readouterr().err
    part = tmp_path / "Tiny-Model.Q4_K_M.gguf.part"
    assert part.stat().st_size == 1_000_000

    assert models(tmp_path, *pull) == 0
    assert file_server.range_headers == [None, "bytes=1000000-"]
    assert "resuming at 1.0 MB" in capsys.readouterr().err
    assert hashlib.sha256((tmp_path / "Tiny-Model.Q4_K_M.gguf").read_bytes()).hexdigest() == DIGEST


def test_a_server_without_range_support_restarts_the_file_cleanly(
    tmp_path: Path, file_server: FileServer
) -> None:
    file_server.ranges, file_server.drop_after = False, 700_000
    pulls = store(tmp_path, file_server.url)
    with pytest.raises(DownloadFailedError):
        pulls.pull("tiny:q4", allow_http_loopback=True)
    result = pulls.pull("tiny:q4", allow_http_loopback=True)
    assert file_server.range_headers == [
        None,
        "bytes=700000-",
    ]  # asked, got a 200: started over
    assert result.sha256 == DIGEST and result.path.read_bytes() == BODY


def test_a_sha256_mismatch_deletes_the_part_and_says_so(
    tmp_path: Path, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        models(
            tmp_path,
            "pull",
            file_server.url,
            "--sha256",
            "0" * 64,
            "--allow-http-loopback",
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and DIGEST in err and "was deleted" in err
    assert list(tmp_path.iterdir()) == []


def test_too_little_disk_is_refused_before_any_request(tmp_path: Path, file_server: FileServer) -> None:
    with pytest.raises(NotEnoughDiskError, match=r"not enough disk.*nothing was downloaded"):
        store(tmp_path, file_server.url, disk=len(BODY) - 1).pull("tiny:q4", allow_http_loopback=True)
    assert file_server.range_headers == []


def test_too_little_disk_for_a_url_is_refused_before_reading_the_body(
    tmp_path: Path, file_server: FileServer
) -> None:
    with pytest.raises(NotEnoughDiskError):
        store(tmp_path, file_server.url, disk=1000).pull(
            file_server.url, sha256=DIGEST, allow_http_loopback=True
        )
    assert not (tmp_path / "Tiny-Model.Q4_K_M.gguf.part").exists()


def test_too_little_ram_is_refused_unless_forced(tmp_path: Path, file_server: FileServer) -> None:
    pulls = store(tmp_path, file_server.url, ram=512 * 1024 * 1024)
    with pytest.raises(NotEnoughMemoryError, match="--force"):
        pulls.pull("tiny:q4", allow_http_loopback=True)
    assert file_server.range_headers == []
    assert pulls.pull("tiny:q4", force=True, allow_http_loopback=True).sha256 == DIGEST


def test_list_shows_what_is_here_and_what_can_be_pulled_then_rm_deletes_it(
    tmp_path: Path, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # No digest given, unpinned allowed: the digest is reported, the file marked unverified.
    assert (
        models(
            tmp_path,
            "pull",
            file_server.url,
            "--allow-unpinned",
            "--allow-http-loopback",
        )
        == 0
    )
    assert f"sha256 {DIGEST} (not verified" in capsys.readouterr().err
    assert models(tmp_path, "list", "--json") == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["Tiny-Model.Q4_K_M"] == {
        "id": "Tiny-Model.Q4_K_M",
        "file": "Tiny-Model.Q4_K_M.gguf",
        "size": len(BODY),
        "sha256": DIGEST,
        "verified": False,
        "present": True,
    }
    assert rows["phi-2:2.7b-q4"]["present"] is False and rows["smollm2:135m-instruct-q4"]["present"]

    assert models(tmp_path, "list") == 0
    table = capsys.readouterr().out
    assert table.startswith("ID") and "phi-2:2.7b-q4" in table and "unverified" in table

    assert models(tmp_path, "rm", "Tiny-Model.Q4_K_M") == 0
    assert list(tmp_path.iterdir()) == []
    assert models(tmp_path, "rm", "Tiny-Model.Q4_K_M") == 1
    assert "is not in" in capsys.readouterr().err


# --- Where a pull may come from, and what it may keep (issue 11, finding 10) ---


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.gguf",
        "https://10.0.0.1/x.gguf",
        "https://169.254.169.254/latest/x.gguf",  # a cloud's metadata service
        "https://[::ffff:192.168.1.1]/x.gguf",  # a private IPv4 address written as IPv6
        "https://[fd00::1]/x.gguf",
        "http://example.org/x.gguf",
        "ftp://example.org/x.gguf",
    ],
)
def test_a_pull_from_plain_http_or_an_internal_address_is_refused_before_any_byte_is_written(
    tmp_path: Path, url: str
) -> None:
    for allow_http_loopback in (False, True):  # the flag opens loopback only
        with pytest.raises(UnsafeSourceError):
            store(tmp_path, url).pull(url, sha256=DIGEST, allow_http_loopback=allow_http_loopback)
    assert list(tmp_path.iterdir()) == []


def test_plain_http_to_loopback_needs_the_explicit_flag(
    tmp_path: Path, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models(tmp_path, "pull", file_server.url, "--sha256", DIGEST) == 1
    assert "--allow-http-loopback" in capsys.readouterr().err
    assert file_server.range_headers == [] and list(tmp_path.iterdir()) == []
    assert (
        models(
            tmp_path,
            "pull",
            file_server.url,
            "--sha256",
            DIGEST,
            "--allow-http-loopback",
        )
        == 0
    )
    assert (tmp_path / "Tiny-Model.Q4_K_M.gguf").read_bytes() == BODY


def test_loopback_over_https_is_refused_without_the_flag_even_behind_a_host_name(
    tmp_path: Path, file_server: FileServer
) -> None:
    port = urlparse(file_server.url).port
    for url in (f"https://127.0.0.1:{port}/x.gguf", f"https://localhost:{port}/x.gguf"):
        with pytest.raises(UnsafeSourceError, match="loopback"):
            store(tmp_path, url).pull(url, sha256=DIGEST)
    # `localhost` is refused once resolved, on the connected address: no request was sent.
    assert file_server.range_headers == [] and list(tmp_path.iterdir()) == []


def test_an_https_pull_has_its_address_checked_before_the_tls_handshake(
    tmp_path: Path, tls_file_server: FileServer
) -> None:
    # Without the flag, `localhost` is refused on the address it reached: no TLS, no request.
    with pytest.raises(UnsafeSourceError, match="loopback"):
        store(tmp_path, tls_file_server.url).pull(tls_file_server.url, sha256=DIGEST)
    assert tls_file_server.tls_hellos == [] and tls_file_server.range_headers == []
    assert list(tmp_path.iterdir()) == []
    # With it, the same connection goes on to a verified TLS handshake and the file.
    result = store(tmp_path, tls_file_server.url).pull(
        tls_file_server.url, sha256=DIGEST, allow_http_loopback=True
    )
    assert result.verified and result.path.read_bytes() == BODY
    assert tls_file_server.tls_hellos == ["localhost"] and tls_file_server.range_headers == [None]


@pytest.mark.parametrize("target", ["http://10.0.0.1/x.gguf", "https://192.168.0.1/x.gguf"])
def test_a_redirect_to_an_internal_host_is_refused(
    tmp_path: Path, file_server: FileServer, target: str
) -> None:
    file_server.redirect_to = target
    moved = file_server.url.replace("/files/", "/moved/")
    with pytest.raises(UnsafeSourceError):
        store(tmp_path, moved).pull(moved, sha256=DIGEST, allow_http_loopback=True)
    assert file_server.range_headers == [None] and list(tmp_path.iterdir()) == []


def test_a_redirect_that_passes_the_same_checks_is_followed(tmp_path: Path, file_server: FileServer) -> None:
    moved = file_server.url.replace("/files/", "/moved/")
    result = store(tmp_path, moved).pull(moved, sha256=DIGEST, allow_http_loopback=True)
    assert result.verified and result.path.read_bytes() == BODY
    assert file_server.range_headers == [None, None]


def test_a_file_that_is_not_a_gguf_is_refused_on_its_first_bytes_and_nothing_is_kept(
    tmp_path: Path, file_server: FileServer
) -> None:
    file_server.body = NOT_GGUF
    written: list[int] = []
    with pytest.raises(NotAGgufError, match="not a GGUF"):
        # Its digest is the one given: only the magic number can refuse it.
        store(tmp_path, file_server.url).pull(
            file_server.url,
            sha256=hashlib.sha256(NOT_GGUF).hexdigest(),
            on_progress=written.append,
            allow_http_loopback=True,
        )
    assert written == [] and list(tmp_path.iterdir()) == []


def test_a_partial_file_that_does_not_start_as_a_gguf_is_refused_and_deleted(
    tmp_path: Path, file_server: FileServer
) -> None:
    (tmp_path / "tiny-q4.gguf.part").write_bytes(b"<htm" + BODY[4:1000])
    with pytest.raises(NotAGgufError):
        store(tmp_path, file_server.url).pull("tiny:q4", allow_http_loopback=True)
    assert file_server.range_headers == [] and list(tmp_path.iterdir()) == []


class CarelessDownloader(HttpDownloader):
    """Writes what it was given without looking at it: the store's own check before the rename."""

    def download(
        self,
        url: str,
        part: Path,
        on_start: OnStart,
        on_progress: OnProgress,
        **_checks: object,
    ) -> Downloaded:
        part.write_bytes(NOT_GGUF)
        return Downloaded(hashlib.sha256(NOT_GGUF).hexdigest(), len(NOT_GGUF), 0)


def test_the_magic_number_is_checked_again_before_the_file_is_kept(
    tmp_path: Path,
) -> None:
    url = "https://huggingface.co/org/repo/resolve/main/x.gguf"
    spec = EdgeModelSpec("x", "x.gguf", len(NOT_GGUF), url, hashlib.sha256(NOT_GGUF).hexdigest())
    pulls = ModelStore(tmp_path, FakeHostResources(100 * GIB, 64 * GIB), CarelessDownloader(), (spec,))
    with pytest.raises(NotAGgufError):
        pulls.pull("x")
    assert list(tmp_path.iterdir()) == []


def test_an_unpinned_entry_is_pulled_only_with_allow_unpinned_or_a_digest_given(
    tmp_path: Path, file_server: FileServer
) -> None:
    pulls = store(tmp_path, file_server.url, sha256=None)
    with pytest.raises(UnpinnedModelError, match="--allow-unpinned"):
        pulls.pull("tiny:q4", allow_http_loopback=True)
    assert file_server.range_headers == [] and list(tmp_path.iterdir()) == []
    assert pulls.pull("tiny:q4", sha256=DIGEST, allow_http_loopback=True).verified
    pulls.remove("tiny:q4")
    allowed = pulls.pull("tiny:q4", allow_unpinned=True, allow_http_loopback=True)
    assert allowed.downloaded and not allowed.verified and allowed.sha256 == DIGEST


def test_a_url_without_a_digest_needs_allow_unpinned(
    tmp_path: Path, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models(tmp_path, "pull", file_server.url, "--allow-http-loopback") == 1
    assert "--allow-unpinned" in capsys.readouterr().err
    assert file_server.range_headers == [] and list(tmp_path.iterdir()) == []


def test_a_pinned_entry_is_checked_against_its_pin_and_nothing_else(
    tmp_path: Path, file_server: FileServer
) -> None:
    pulls = store(tmp_path, file_server.url, sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match="sha256 mismatch"):
        pulls.pull("tiny:q4", allow_unpinned=True, allow_http_loopback=True)  # the flag does not loosen a pin
    assert list(tmp_path.iterdir()) == []
    # A --sha256 that disagrees with the pin cannot replace it: refused before any request.
    requests = len(file_server.range_headers)
    with pytest.raises(ChecksumMismatchError, match="pins"):
        pulls.pull("tiny:q4", sha256=DIGEST, allow_http_loopback=True)
    assert len(file_server.range_headers) == requests and list(tmp_path.iterdir()) == []


def test_koprogo_models_pull_passes_the_flags_to_the_model_manager(
    tmp_path: Path, file_server: FileServer
) -> None:
    koprogo = Path(sys.executable).with_name("koprogo")
    env = {**os.environ, "KOPROGO_MODELS_DIR": str(tmp_path)}

    def pull(*flags: str) -> subprocess.CompletedProcess[str]:
        argv = [str(koprogo), "models", "pull", file_server.url, *flags]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)

    refused = pull("--sha256", DIGEST)
    assert refused.returncode == 1 and "--allow-http-loopback" in refused.stderr, refused.stderr
    unpinned = pull("--allow-http-loopback")
    assert unpinned.returncode == 1 and "--allow-unpinned" in unpinned.stderr, unpinned.stderr
    assert file_server.range_headers == []
    pulled = pull("--allow-http-loopback", "--allow-unpinned")
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "Tiny-Model.Q4_K_M.gguf").read_bytes() == BODY


async def test_an_on_demand_model_unloads_when_idle_and_loads_again_for_the_next_request(
    bundled_model_path: Path,
) -> None:
    engine = OnDemandEngine(lambda: LlamaEngine(bundled_model_path, n_ctx=512), keep_alive_s=0.3)
    await engine.load()
    try:
        assert engine.resident and engine.loaded
        await asyncio.sleep(0.8)
        assert not engine.resident and engine.loaded  # still served, no longer in memory
        result = await engine.chat([ChatMessage(role="user", content="Bonjour")], Sampling(0.0), 4)
        assert engine.resident and result.completion_tokens > 0
    finally:
        await engine.close()
    assert not engine.resident


async def test_a_pulled_models_heartbeat_reports_when_it_is_not_resident(
    clean_jetstream: str, bundled_model_path: Path
) -> None:
    model = "pulled:tiny"
    settings = node_settings(
        clean_jetstream,
        "edge-keep",
        node_model=str(bundled_model_path),
        node_model_id=model,
        keep_alive_s=1.0,
        heartbeat_interval_s=0.2,
        llama_n_ctx=512,
    )
    async with nats_client(clean_jetstream) as (nc, js):
        reply = reply_subject()
        async with (
            listening(nc, subjects.node_heartbeat("edge-keep"), "heartbeat") as beats,
            listening(nc, reply, "outcome") as replies,
            running_node(settings),
        ):
            first: NodeHeartbeat = await beats.next(30)
            assert first.models == [model] and first.resident
            while (await beats.next(2)).resident:
                pass  # unloaded after 1 s idle
            cmd = run_inference("Bonjour", reply_subject=reply, max_tokens=8).model_copy(
                update={"model": model}
            )
            await publish_event(js, subjects.run_inference_edge(model), cmd)
            outcome = await replies.next(60)
            assert isinstance(outcome, ChatCompleted)
            while not beats.items.empty():  # beats sent before the answer
                beats.items.get_nowait()
            await nc.publish(subjects.NODES_ANNOUNCE, b"")
            assert (await beats.next(2)).resident  # loaded again for the request
