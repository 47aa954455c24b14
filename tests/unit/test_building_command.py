"""`koprogo building add` (issue 18): the building's folder holds its own keys, not the hub's."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from koprogo_cli.building_command import BuildingError, add_building
from koprogo_cli.dev_auth import jwt_secret_path
from koprogo_cli.nats_auth import identities
from koprogo_cli.nats_keys import HUB_LEAF_SEED, building_of, building_seed_file, registered_buildings
from koprogo_cli.secrets import add_reading_key, content_keys_path, ensure_content_keyring
from koprogo_shared import leaf_site
from koprogo_shared.content_crypto import load_keyring


def _ids(path: Path) -> list[str]:
    return [
        line.split(":", 1)[0] for line in path.read_text().splitlines() if line and not line.startswith("#")
    ]


def test_the_buildings_folder_holds_its_leaf_key_and_a_content_key_of_its_own(tmp_path: Path) -> None:
    hub, out = tmp_path / "hub", tmp_path / "building"
    ensure_content_keyring(hub, environ={})
    hub_key = _ids(content_keys_path(hub))[-1]
    written = add_building(hub, "c1", out)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (out / "secrets" / "nats" / HUB_LEAF_SEED).read_text() == building_seed_file(
        hub / "secrets" / "nats", "c1"
    ).read_text()
    assert building_of(out / "secrets" / "nats") == "c1"
    assert registered_buildings(hub / "secrets" / "nats") == ["c1"]
    # Its own content key, which the hub's keyring now holds too without it becoming current;
    # nothing of the hub's keys in the building's, and no signing secret of the hub's.
    building_key = _ids(content_keys_path(out))
    assert len(building_key) == 1 and hub_key not in building_key
    assert _ids(content_keys_path(hub)) == [*building_key, hub_key]
    keyring = load_keyring(None, None, content_keys_path(hub))
    assert keyring.current_key_id == hub_key
    assert not jwt_secret_path(out).exists()


def test_a_second_building_in_the_same_folder_or_a_bad_copro_is_refused(tmp_path: Path) -> None:
    hub, out = tmp_path / "hub", tmp_path / "building"
    add_building(hub, "c1", out)
    with pytest.raises(BuildingError, match="already holds a building"):
        add_building(hub, "c2", out)
    with pytest.raises(BuildingError):
        add_building(hub, "a.b", tmp_path / "other")
    # A building's folder registers no buildings of its own.
    with pytest.raises(BuildingError, match="building's folder"):
        add_building(out, "c3", tmp_path / "third")


def test_adding_the_same_reading_key_twice_keeps_one(tmp_path: Path) -> None:
    hub, out = tmp_path / "hub", tmp_path / "building"
    add_building(hub, "c1", out)
    before = content_keys_path(hub).read_text()
    add_reading_key(content_keys_path(hub), content_keys_path(out))
    assert content_keys_path(hub).read_text() == before


def test_identities_give_the_hub_a_leaf_user_per_building_and_the_building_its_inbox_root(
    tmp_path: Path,
) -> None:
    hub, out = tmp_path / "hub", tmp_path / "building"
    add_building(hub, "c1", out)
    at_hub = identities(hub / "secrets" / "nats", {})
    [leaf] = [user for user in at_hub.users if user.label.startswith("leaf link")]
    assert leaf.permissions is not None
    assert leaf.permissions.publish == leaf_site.leaf_link_permissions("c1").publish
    in_building = identities(out / "secrets" / "nats", {})
    root = leaf_site.building_inbox_root("c1")
    for user in in_building.users:
        if user.permissions is not None:
            assert any(s.startswith(f"{root}.{user.public_key}") for s in user.permissions.subscribe), (
                user.label
            )
            assert not any(s.startswith(f"_INBOX.{user.public_key}") for s in user.permissions.subscribe)
