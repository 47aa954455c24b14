"""One catalogue behind every hint: no message tells a user to run a command that refuses it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from koprogo_node.adapters.model_files import resolve_model
from koprogo_node.domain.errors import ModelFileError
from koprogo_node.domain.model_catalogue import EDGE_MODELS, find_edge_model
from koprogo_shared.catalogue import (
    BUNDLED_MODEL_ID,
    CATALOGUE,
    RECOMMENDED_MODEL_ID,
    find_model,
    pullable_model_ids,
    serve_hint,
)

PULL = re.compile(r"models pull (\S+?)`")


def test_every_pull_a_hint_suggests_is_a_pull_the_model_manager_accepts() -> None:
    suggested = [(m.id, pulled) for m in CATALOGUE for pulled in PULL.findall(serve_hint(m.id))]
    assert len(suggested) >= len(pullable_model_ids()), suggested  # the pattern still finds the pulls
    for model_id, pulled in suggested:
        assert find_edge_model(pulled) is not None, (model_id, serve_hint(model_id))


def test_every_local_model_but_the_bundled_one_can_be_served_by_the_hint_it_gets() -> None:
    for model in CATALOGUE:
        hint = serve_hint(model.id)
        if model.provider != "local":
            assert "API key" in hint and "pull" not in hint
        elif model.id == BUNDLED_MODEL_ID:
            assert "ships with it" in hint
        else:
            assert f"up --model {model.id}" in hint, hint


def test_the_seeds_llama3_id_is_pullable_and_the_recommended_model_is_a_pullable_local_one() -> None:
    # The seed's `llama3:8b` used to send users round in a circle: pull refused it.
    assert find_edge_model("llama3:8b") is not None
    assert RECOMMENDED_MODEL_ID in pullable_model_ids()
    assert {m.id for m in EDGE_MODELS} == set(pullable_model_ids())
    recommended = find_model(RECOMMENDED_MODEL_ID)
    assert recommended is not None and recommended.edge_compatible


def test_an_unknown_id_gets_the_pullable_ones() -> None:
    assert all(model_id in serve_hint("llama9:1t") for model_id in pullable_model_ids())


def test_a_missing_model_file_suggests_a_pull_only_when_the_id_is_pullable(tmp_path: Path) -> None:
    # The catalogue pins no digest for it yet: the hint carries the flag a pull then needs.
    with pytest.raises(ModelFileError, match="koprogo models pull llama3:8b --allow-unpinned`") as pullable:
        resolve_model("llama3:8b", tmp_path)
    assert str(tmp_path / "llama3-8b.gguf") in str(pullable.value)
    with pytest.raises(ModelFileError) as unknown:
        resolve_model("house-model", tmp_path)
    assert "pull" not in str(unknown.value) and "not in the catalogue" in str(unknown.value)
