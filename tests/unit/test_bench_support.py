"""bench/support.py: the stack benchmarks' environment, deployments file and baseline source (no stack)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from koprogo_shared.deployments import load_deployments_file

_BENCH = Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("support", _BENCH / "support.py")
assert _spec is not None and _spec.loader is not None
support = importlib.util.module_from_spec(_spec)
sys.modules["support"] = support
_spec.loader.exec_module(support)
_load_spec = importlib.util.spec_from_file_location("load", _BENCH / "load.py")
assert _load_spec is not None and _load_spec.loader is not None
load = importlib.util.module_from_spec(_load_spec)
sys.modules["load"] = load
_load_spec.loader.exec_module(load)


@pytest.fixture
def saved_environ() -> Iterator[None]:
    """`use_stack_environ` rewrites os.environ: put it back as it was."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_stack_environment_drops_outside_servers_and_the_otlp_exporter_and_raises_the_limits():
    given = {
        "PATH": "/usr/bin",
        "NATS_URL": "nats://elsewhere:4222",
        "DATABASE_URL": "postgresql://elsewhere/db",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_SERVICE_NAME": "x",
        "RATE_LIMIT_PER_USER": "10",
        "NATS_MONITOR_PORT": "8222",
    }
    environ = support.bench_environ(given, Path("/tmp/d.toml"))
    assert environ == {
        "PATH": "/usr/bin",
        "NATS_MONITOR_PORT": "8222",
        "CLOUD_DEPLOYMENTS_FILE": "/tmp/d.toml",
        "RATE_LIMIT_PER_COPRO": support.RATE_LIMIT,
        "RATE_LIMIT_PER_USER": support.RATE_LIMIT,
    }
    assert given["NATS_URL"] == "nats://elsewhere:4222"  # the caller's mapping is left alone


@pytest.mark.parametrize(("concurrency", "expected"), [(16, 16), (None, 4)])
def test_the_deployments_file_serves_the_cloud_model_from_the_backend_without_a_key(
    tmp_path: Path, concurrency: int | None, expected: int
):
    text = support.backend_deployments("http://127.0.0.1:18000/v1", concurrency)
    table = tomllib.loads(text)["deployments"][0]
    assert table["provider"] == "openai_compatible" and table["api_key_env"] == ""
    assert ("concurrency" in table) == (concurrency is not None)
    path = tmp_path / "deployments.toml"
    path.write_text(text)
    (deployment,) = load_deployments_file(path)  # the cloud worker's own reading of it
    assert deployment.base_url == "http://127.0.0.1:18000/v1"
    assert deployment.models == {support.CLOUD_MODEL: support.CLOUD_MODEL}
    assert deployment.concurrency == expected and deployment.timeout_s == 60


def test_use_stack_environ_writes_the_file_and_makes_os_environ_the_stacks(
    tmp_path: Path, saved_environ: None
):
    os.environ["DATABASE_URL"] = "postgresql://elsewhere/db"
    os.environ["OTEL_TRACES_EXPORTER"] = "otlp"
    os.environ["BENCH_KEPT"] = "yes"
    support.use_stack_environ(tmp_path, "http://127.0.0.1:18001/v1", 8)
    assert "DATABASE_URL" not in os.environ and "OTEL_TRACES_EXPORTER" not in os.environ
    assert os.environ["BENCH_KEPT"] == "yes"
    assert os.environ["CLOUD_DEPLOYMENTS_FILE"] == str(tmp_path / "deployments.toml")
    (deployment,) = load_deployments_file(tmp_path / "deployments.toml")
    assert deployment.base_url == "http://127.0.0.1:18001/v1" and deployment.concurrency == 8


def test_the_baseline_source_is_the_folder_as_committed_at_the_revision(tmp_path: Path):
    folder = support.baseline_source("HEAD", "bench", tmp_path)
    assert folder == tmp_path / "bench"
    committed = subprocess.run(
        ["git", "-C", str(support.REPO), "show", "HEAD:bench/instant_openai.py"],
        capture_output=True,
        check=True,
    ).stdout
    assert (folder / "instant_openai.py").read_bytes() == committed
    with pytest.raises(subprocess.CalledProcessError):
        support.baseline_source("no-such-revision-anywhere", "bench", tmp_path / "other")


def test_cpu_per_run_counts_a_child_started_during_it_whole_and_misses_one_that_ended():
    before = {(1, 0.0): 2.0, (2, 0.0): 1.0}
    after = {(1, 0.0): 2.5, (3, 5.0): 0.25}
    assert load.cpu_delta(before, after) == pytest.approx(0.75)
    assert support.parse_ints("1, 16,") == [1, 16]


def test_the_cpu_total_sums_each_process_median_but_the_ones_left_out():
    per = {"gateway": [1.0, 3.0, 2.0], support.WRK: [9.0], "backend": [0.5, 0.7, 0.6]}
    assert support.cpu_total(per) == pytest.approx(2.6)
    assert support.cpu_total(per, leave_out=(support.WRK, "backend")) == pytest.approx(2.0)
