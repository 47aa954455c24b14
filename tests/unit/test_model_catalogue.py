"""The pullable edge models: ids agree with the shared catalogue, sources and sizes are sane,
every source names its digest or says it is unpinned; where a pull may come from and what a
GGUF file starts with."""

from __future__ import annotations

from pathlib import Path

import pytest

from koprogo_node.adapters.host_resources import parse_meminfo
from koprogo_node.domain.errors import NotAGgufError, UnsafeSourceError
from koprogo_node.domain.model_catalogue import (
    EDGE_MODELS,
    RAM_HEADROOM_BYTES,
    SourcePolicy,
    check_gguf_head,
    find_edge_model,
    human_bytes,
    is_url,
    model_id_from_url,
)
from koprogo_node.entrypoints.progress import ProgressBar
from koprogo_shared.catalogue import CATALOGUE, UNPINNED, GgufSource, find_model


def test_every_pullable_model_is_an_edge_model_of_the_shared_catalogue() -> None:
    assert {m.id for m in EDGE_MODELS} == {
        "llama3:8b",
        "llama3:8b-instruct-q4",
        "mistral:7b-instruct-q4",
        "phi-2:2.7b-q4",
    }
    for spec in EDGE_MODELS:
        entry = find_model(spec.id)
        assert entry is not None and entry.edge_compatible


def test_sources_are_exact_hugging_face_files_of_q4_k_m_quantisations() -> None:
    for spec in EDGE_MODELS:
        assert spec.url.startswith("https://huggingface.co/") and "/resolve/main/" in spec.url
        assert spec.url.endswith("/" + spec.upstream_file) and "Q4_K_M" in spec.upstream_file


def test_every_catalogue_gguf_names_its_sha256_or_says_it_is_unpinned() -> None:
    sources = [m.gguf for m in CATALOGUE if m.gguf is not None]
    assert sources
    for source in sources:
        digest = source.sha256
        assert digest == UNPINNED or (len(digest) == 64 and all(c in "0123456789abcdef" for c in digest))
    for spec in EDGE_MODELS:  # the node's view: None is "unpinned", never a made-up value
        entry = find_model(spec.id)
        assert entry is not None and entry.gguf is not None
        assert spec.sha256 == (None if entry.gguf.sha256 == UNPINNED else entry.gguf.sha256)


def test_a_gguf_source_cannot_leave_its_digest_out_or_give_a_malformed_one() -> None:
    with pytest.raises(TypeError):
        GgufSource("x.gguf", 1, "https://huggingface.co/o/r/resolve/main/x.gguf")  # type: ignore[call-arg]
    for bad in ("", "abc", "A" * 64, "0" * 63, "sha256:" + "0" * 64):
        with pytest.raises(ValueError, match="sha256"):
            GgufSource("x.gguf", 1, "https://huggingface.co/o/r/resolve/main/x.gguf", bad)
    assert not GgufSource("x.gguf", 1, "https://h/x.gguf", UNPINNED).pinned
    assert GgufSource("x.gguf", 1, "https://h/x.gguf", "0" * 64).pinned


@pytest.mark.parametrize(
    "url",
    [
        "http://example.org/x.gguf",  # plain http: readable and changeable on the way
        "ftp://example.org/x.gguf",
        "file:///etc/passwd",
        "https:///x.gguf",  # no host
        "https://10.0.0.1/x.gguf",
        "https://172.16.5.4/x.gguf",
        "https://192.168.1.10/x.gguf",
        "https://100.64.0.1/x.gguf",  # carrier-grade NAT
        "https://169.254.169.254/x.gguf",  # a cloud's metadata service
        "https://0.0.0.0/x.gguf",
        "https://127.0.0.1/x.gguf",
        "https://[::1]/x.gguf",
        "https://[fe80::1]/x.gguf",
        "https://[fd12:3456::1]/x.gguf",
        "https://[::ffff:10.0.0.1]/x.gguf",
        "https://224.0.0.1/x.gguf",
    ],
)
def test_the_source_policy_refuses_plain_http_and_internal_addresses(url: str) -> None:
    with pytest.raises(UnsafeSourceError):
        SourcePolicy().check_url(url)


def test_the_loopback_flag_opens_loopback_and_nothing_else() -> None:
    allowed = SourcePolicy(allow_http_loopback=True)
    for url in (
        "http://127.0.0.1:8000/x.gguf",
        "http://localhost/x.gguf",
        "http://[::1]:9/x.gguf",
        "https://127.0.0.1/x.gguf",
        "https://huggingface.co/o/r/resolve/main/x.gguf",
    ):
        allowed.check_url(url)
    for url in (
        "http://10.0.0.1/x.gguf",
        "http://example.org/x.gguf",
        "https://192.168.1.1/x.gguf",
    ):
        with pytest.raises(UnsafeSourceError):
            allowed.check_url(url)
    # A name passes here; it is checked once resolved (check_peer).
    SourcePolicy().check_url("https://huggingface.co/o/r/resolve/main/x.gguf")


def test_the_connected_address_is_checked_too() -> None:
    # A public name can resolve to an internal address (or be made to, between two lookups).
    SourcePolicy().check_peer("https", "cdn.example", "93.184.215.14")
    SourcePolicy().check_peer("https", "cdn.example", "2606:4700::6810:84e5")
    for address in (
        "10.1.2.3",
        "127.0.0.1",
        "::1",
        "::ffff:192.168.0.7",
        "fe80::1%eth0",
    ):
        with pytest.raises(UnsafeSourceError, match=r"cdn\.example"):
            SourcePolicy().check_peer("https", "cdn.example", address)
    loopback = SourcePolicy(allow_http_loopback=True)
    loopback.check_peer("http", "localhost", "127.0.0.1")
    loopback.check_peer("https", "localhost", "::1")
    with pytest.raises(UnsafeSourceError):  # plain http that resolved elsewhere than loopback
        loopback.check_peer("http", "localhost", "93.184.215.14")


def test_only_a_file_that_starts_with_the_gguf_magic_number_is_a_gguf() -> None:
    check_gguf_head(b"GGUF\x03\x00\x00\x00")
    for head in (b"<!do", b"GGU", b"", b"gguf", b"\x00GGUF"):
        with pytest.raises(NotAGgufError, match="not a GGUF"):
            check_gguf_head(head)


def test_ram_need_is_the_weights_plus_the_runtime_headroom() -> None:
    phi = find_edge_model("phi-2:2.7b-q4")
    assert phi is not None and 1_700_000_000 < phi.size_bytes < 1_900_000_000
    assert phi.ram_bytes == phi.size_bytes + RAM_HEADROOM_BYTES
    assert find_edge_model("gpt-4o") is None


def test_a_url_gives_its_file_stem_as_model_id() -> None:
    url = "https://huggingface.co/org/repo/resolve/main/Phi-3-mini.Q4_K_M.gguf?download=true"
    assert is_url(url) and not is_url("phi-2:2.7b-q4") and not is_url("/tmp/x.gguf")
    assert model_id_from_url(url) == "Phi-3-mini.Q4_K_M"


def test_sizes_read_in_decimal_units() -> None:
    assert human_bytes(512) == "512 B" and human_bytes(4_920_000_000) == "4.9 GB"


def test_meminfo_prefers_mem_available_over_mem_total() -> None:
    text = "MemTotal:        8000000 kB\nMemFree:  100 kB\nMemAvailable:    6000000 kB\n"
    assert parse_meminfo(text) == 6000000 * 1024
    assert parse_meminfo("MemTotal:        8000000 kB\n") == 8000000 * 1024
    assert parse_meminfo("") is None


def test_the_progress_bar_prints_a_line_per_tenth_when_not_on_a_terminal(
    tmp_path: Path,
) -> None:
    with (tmp_path / "log").open("w+") as stream:
        bar = ProgressBar("phi-2:2.7b-q4", stream)
        bar.start(1000, 0)
        for done in range(0, 1001, 50):
            bar.update(done)
        bar.finish()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines[0] == "pulling phi-2:2.7b-q4 (1.0 kB)"
    assert len(lines) == 12 and lines[-1].startswith("[" + "#" * 30 + "] 100%")
