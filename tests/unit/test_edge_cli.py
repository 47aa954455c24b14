"""`koprogo-node` flags: what they set, and the clear errors before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from koprogo_node.entrypoints.cli import build_parser, main, settings_from_args
from koprogo_shared.catalogue import BUNDLED_MODEL_ID


def test_defaults_are_the_seeds_port_and_the_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPS_PORT", "NODE_MODEL", "NODE_ID", "KOPROGO_MODELS_DIR", "MODELS_DIR"):
        monkeypatch.delenv(var, raising=False)
    settings = settings_from_args([])
    assert settings.ops_port == 3031
    assert settings.node_model == BUNDLED_MODEL_ID
    assert settings.models_dir == Path.home() / ".local/share/koprogo/models"
    assert settings.keep_alive_s == 300
    assert settings.node_id  # hostname-derived


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://from-env:4222")
    monkeypatch.setenv("POWER_WATTS", "5")
    settings = settings_from_args(
        [
            "-p",
            "4000",
            "-m",
            "phi-2:2.7b-q4",
            "--models-dir",
            "/srv/models",
            "-g",
            "https://grid.example",
            "--nats-url",
            "nats://flag:4222",
            "--node-id",
            "pi-1",
            "--intensity",
            "20",
            "--renewable",
            "--threads",
            "4",
            "--n-ctx",
            "4096",
            "--mcp",
            "--keep-alive",
            "60",
        ]
    )
    assert settings.ops_port == 4000 and settings.node_model == "phi-2:2.7b-q4"
    assert settings.models_dir == Path("/srv/models") and settings.grid_url == "https://grid.example"
    assert settings.nats_url == "nats://flag:4222" and settings.node_id == "pi-1"
    assert settings.power_watts == 5 and settings.intensity_g_per_kwh == 20 and settings.renewable_attested
    assert settings.llama_threads == 4 and settings.llama_n_ctx == 4096 and settings.mcp_enabled
    assert settings.keep_alive_s == 60


def test_the_models_dir_comes_from_koprogo_models_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOPROGO_MODELS_DIR", "/srv/koprogo-models")
    assert settings_from_args([]).models_dir == Path("/srv/koprogo-models")


def test_help_says_how_to_join_the_grid_and_serve_mcp() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "--grid " in text and "join the grid: run grid tasks" in text
    assert "--grid-url" in text and "implies --grid" in text and "--grid-tasks" in text
    assert "--mcp" in text and "later issue" not in text


def test_grid_flags_join_the_grid_with_the_task_types_named() -> None:
    assert not settings_from_args([]).joins_grid
    assert settings_from_args(["--grid"]).joins_grid
    joined = settings_from_args(["-g", "nats://hub:4222", "--grid-tasks", "ocr_invoice,predict_expenses"])
    assert joined.joins_grid and joined.grid_task_types == ["ocr_invoice", "predict_expenses"]
    with pytest.raises(ValueError, match="ocr_invoce"):
        settings_from_args(["--grid", "--grid-tasks", "ocr_invoce"])


def test_a_missing_model_file_exits_2_naming_the_expected_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["-m", "llama3:8b", "--models-dir", str(tmp_path), "-p", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "llama3-8b.gguf") in err and "koprogo-node models pull llama3:8b" in err
