"""How the node's bootstrap sets up its grid side: its key, its energy settings and meter, its model digest."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import nkeys
import pytest
from pydantic import ValidationError

from koprogo_node.adapters.energy_meter import MeterFile
from koprogo_node.adapters.inference import FakeInferenceEngine
from koprogo_node.adapters.model_files import model_file_sha256
from koprogo_node.bootstrap import build_executors, energy_meter, energy_profile, grid_signer
from koprogo_node.domain.errors import ModelFileError, NodeError
from koprogo_node.entrypoints.cli import settings_from_args
from koprogo_node.service_layer.energy import DeclaredPower
from koprogo_node.service_layer.tasks.executor import TaskRun
from koprogo_node.service_layer.tasks.summarize_meeting import SummarizeMeetingExecutor
from koprogo_node.service_layer.tasks.translate_document import TranslateDocumentExecutor
from koprogo_node.settings import NodeSettings
from tests.unit.minutes_samples import TILLEULS


def _settings(tmp_path: Path, **kw: object) -> NodeSettings:
    return NodeSettings(models_dir=tmp_path / "data" / "models", **kw)  # type: ignore[arg-type]


def test_a_node_without_nats_keys_mints_its_grid_key_once_beside_its_models_folder(tmp_path: Path) -> None:
    settings = _settings(tmp_path, node_id="pi-cave")
    assert settings.grid_seed_file() == tmp_path / "data" / "grid-node-pi-cave.nk"
    first = grid_signer(settings)
    assert settings.grid_seed_file().stat().st_mode & 0o777 == 0o600
    assert grid_signer(settings).public_key == first.public_key
    # Another node of the same host (same models folder) has its own identity.
    other = grid_signer(_settings(tmp_path, node_id="pi-grenier"))
    assert other.public_key != first.public_key


def test_a_node_with_a_nats_key_signs_with_it(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "node.nk"
    seed_file.write_bytes(seed)
    settings = _settings(tmp_path, node_id="pi-cave", nats_nkey_seed_file=seed_file)
    assert grid_signer(settings).public_key == nkeys.from_seed(bytearray(seed)).public_key.decode()
    assert not settings.grid_seed_file().exists()  # nothing minted


def test_an_unreadable_grid_key_stops_the_node_with_a_clear_error(tmp_path: Path) -> None:
    seed_file = tmp_path / "broken.nk"
    seed_file.write_text("not a seed\n")
    with pytest.raises(NodeError, match="grid key"):
        grid_signer(_settings(tmp_path, grid_signing_seed_file=seed_file))


def test_the_energy_settings_are_what_the_attestations_say(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        energy_source="mixed",
        solar_share=0.35,
        power_watts=9.5,
        intensity_g_per_kwh=80,
        device_class="x86",
    )
    profile = energy_profile(settings)
    assert (profile.source, profile.solar_share, profile.power_watts) == ("mixed", 0.35, 9.5)
    assert (profile.intensity_g_per_kwh, profile.device_class) == (80, "x86")
    assert energy_profile(_settings(tmp_path, energy_source="solar")).solar_share == 1.0
    assert energy_profile(_settings(tmp_path)).source == "grid"
    assert energy_profile(_settings(tmp_path)).solar_share == 0.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"energy_source": "mixed"}, "needs SOLAR_SHARE"),
        ({"energy_source": "solar", "solar_share": 0.5}, "use ENERGY_SOURCE=mixed"),
        ({"energy_source": "grid", "solar_share": 0.2}, "use ENERGY_SOURCE=mixed"),
        ({"energy_source": "mixed", "solar_share": 1.5}, "less than or equal to 1"),
        ({"grid_scheduler_public_key": "Unot-a-key"}, "GRID_SCHEDULER_PUBLIC_KEY"),
    ],
)
def test_energy_and_key_settings_that_cannot_be_true_are_refused(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(tmp_path, **values)


def test_the_flags_set_the_grid_trust_settings(tmp_path: Path) -> None:
    scheduler = nkeys.from_seed(bytearray(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)))
    key = scheduler.public_key.decode()
    settings = settings_from_args(
        [
            "--grid-scheduler-key",
            key,
            "--energy-source",
            "mixed",
            "--solar-share",
            "0.5",
            "--energy-meter-file",
            str(tmp_path / "wh"),
            "--device-class",
            "pi4",
            "--grid-signing-seed-file",
            str(tmp_path / "k.nk"),
        ]
    )
    assert settings.grid_scheduler_public_key == key
    assert (settings.energy_source, settings.attested_solar_share, settings.device_class) == (
        "mixed",
        0.5,
        "pi4",
    )
    assert settings.energy_meter_file == tmp_path / "wh"
    assert settings.grid_seed_file() == tmp_path / "k.nk"


def test_the_meter_is_the_counter_file_when_one_is_named(tmp_path: Path) -> None:
    assert isinstance(energy_meter(_settings(tmp_path)), DeclaredPower)
    # Named but not written yet (the exporter starts later): still the meter, read at each attempt.
    meter = energy_meter(_settings(tmp_path, energy_meter_file=tmp_path / "wh"))
    assert isinstance(meter, MeterFile) and meter.path == tmp_path / "wh"


def test_the_model_file_digest_is_its_sha256_kept_until_the_file_changes(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    assert model_file_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()
    assert model_file_sha256(model) == model_file_sha256(tmp_path / "." / "tiny.gguf")
    model.write_bytes(b"GGUF other weights")
    os.utime(model, ns=(1, 1))  # a new mtime, as a replaced file has
    assert model_file_sha256(model) == hashlib.sha256(b"GGUF other weights").hexdigest()
    with pytest.raises(ModelFileError, match="cannot read"):
        model_file_sha256(tmp_path / "missing.gguf")


def test_the_model_executors_are_given_the_model_file_digest() -> None:
    executors = build_executors(["summarize_meeting", "translate_document"], FakeInferenceEngine(), "ab" * 32)
    assert {getattr(e, "model_sha256", None) for e in executors.values()} == {"ab" * 32}


async def test_model_results_name_the_model_file_only_when_the_model_wrote_them() -> None:
    sha = "cd" * 32
    engine = FakeInferenceEngine(reply="The lift is repaired.")
    summary = await SummarizeMeetingExecutor(engine, sha).run(
        TaskRun(parameters={"text": TILLEULS.read_text()})
    )
    assert summary.result["model_sha256"] == sha
    translated = await TranslateDocumentExecutor(engine, sha).run(
        TaskRun(parameters={"text": "L'ascenseur est réparé.", "target_language": "en"})
    )
    assert translated.result["model_sha256"] == sha
    # Nothing to translate (same language): the model did not run, the result names no model.
    same = await TranslateDocumentExecutor(engine, sha).run(
        TaskRun(
            parameters={"text": "L'ascenseur est réparé.", "target_language": "fr", "source_language": "fr"}
        )
    )
    assert "model_sha256" not in same.result
    # A node that does not know its file (an injected engine) names none.
    unknown = await SummarizeMeetingExecutor(engine).run(TaskRun(parameters={"text": TILLEULS.read_text()}))
    assert "model_sha256" not in unknown.result
