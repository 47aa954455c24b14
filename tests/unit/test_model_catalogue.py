"""The pullable edge models: ids agree with the shared catalogue, sources and sizes are sane."""

from __future__ import annotations

from pathlib import Path

from koprogo_node.adapters.host_resources import parse_meminfo
from koprogo_node.domain.model_catalogue import (
    EDGE_MODELS,
    RAM_HEADROOM_BYTES,
    find_edge_model,
    human_bytes,
    is_url,
    model_id_from_url,
)
from koprogo_node.entrypoints.progress import ProgressBar
from koprogo_shared.catalogue import find_model


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


def test_no_digest_is_claimed_without_having_been_verified() -> None:
    # If one is added, it must be a full sha256 in lower-case hex.
    for spec in EDGE_MODELS:
        assert spec.sha256 is None or (len(spec.sha256) == 64 and spec.sha256 == spec.sha256.lower())


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


def test_the_progress_bar_prints_a_line_per_tenth_when_not_on_a_terminal(tmp_path: Path) -> None:
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
