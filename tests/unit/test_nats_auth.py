"""NATS identities: keys minted once and kept secret, each node's permissions naming only its own work."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from koprogo_cli.main import build_parser
from koprogo_cli.nats_auth import identities, render_authorization
from koprogo_cli.nats_keys import mint_seed, roster_file
from koprogo_cli.nats_permissions import (
    NatsAuthError,
    gateway_permissions,
    node_permissions,
    router_permissions,
)
from koprogo_shared import subjects
from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.kv_buckets import BUCKETS, bucket_stream
from koprogo_shared.nats_connection import NatsCredentialsError, nkey_public_key
from koprogo_shared.node_roster import NodeGrant, parse_roster


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_seed_is_minted_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    seed_file = tmp_path / "secrets" / "nats" / "router.nk"
    first = mint_seed(seed_file)
    again = mint_seed(seed_file)
    assert first == again and first.startswith("U") and len(first) == 56
    assert mode(seed_file) == 0o600 and mode(seed_file.parent) == 0o700
    assert nkey_public_key(seed_file) == first


def test_a_copied_in_seed_is_tightened_to_its_owner(tmp_path: Path) -> None:
    seed_file = tmp_path / "node.nk"
    public_key = mint_seed(seed_file)
    seed_file.chmod(0o644)
    assert mint_seed(seed_file) == public_key and mode(seed_file) == 0o600


def test_a_file_that_is_not_a_user_seed_is_a_clear_error(tmp_path: Path) -> None:
    not_a_seed = tmp_path / "junk.nk"
    not_a_seed.write_text("SUNOTASEED\n")
    with pytest.raises(NatsCredentialsError, match="does not hold a NATS nkey seed"):
        nkey_public_key(not_a_seed)
    with pytest.raises(NatsCredentialsError, match="cannot read"):
        nkey_public_key(tmp_path / "missing.nk")


def test_a_node_may_take_only_its_models_work_and_publish_only_its_own_heartbeat() -> None:
    allowed = node_permissions("UNODE", "pi-1", ["smollm2:135m-instruct-q4"])
    publish = set(allowed.publish)
    assert "koprogo.nodes.heartbeat.pi-1" in publish
    assert not any(
        s.startswith("koprogo.nodes.heartbeat.") and s != "koprogo.nodes.heartbeat.pi-1" for s in publish
    )
    assert not any(s.startswith("koprogo.work.") for s in publish)
    assert not any(s.startswith("koprogo.events.chat.requested") for s in publish)
    # It reads no stream's messages but the task documents' (the object store its grid tasks name).
    documents = f"OBJ_{subjects.DOCUMENTS_BUCKET}"
    assert sorted(s for s in publish if ".STREAM." in s and not s.startswith("$JS.API.STREAM.INFO.")) == [
        f"$JS.API.STREAM.MSG.GET.{documents}",
        "$JS.API.STREAM.NAMES",  # names only: how nats-py finds the stream of a subject
    ]
    assert not any(s.endswith(".>") and s.startswith("$JS.API") for s in publish)
    # Grid: it polls as itself and reports only on its own subjects.
    assert [s for s in publish if s.startswith("koprogo.grid.")] == ["koprogo.grid.poll.pi-1"]
    assert sorted(s for s in publish if s.startswith("koprogo.events.task.")) == [
        "koprogo.events.task.result_reported.*.node.pi-1",
        "koprogo.events.task.started.*.node.pi-1",
    ]
    assert (
        "$JS.API.CONSUMER.CREATE.KOPROGO_WORK.edge-smollm2_c135m-instruct-q4"
        ".koprogo.work.edge.shared.smollm2:135m-instruct-q4" in publish
    )
    # Its replies carry its id, and it hears its own cancels alone.
    assert [s for s in publish if s.startswith("koprogo.reply.")] == ["koprogo.reply.*.node.pi-1"]
    assert set(allowed.subscribe) == {
        "_INBOX.UNODE.>",
        "koprogo.nodes.announce",
        "koprogo.cancel.node.pi-1.*",
    }


@pytest.mark.parametrize(
    ("node_id", "models"), [("pi 1", ["m"]), ("pi-1", []), ("pi-1", ["koprogo.work.>"]), ("", ["m"])]
)
def test_a_node_identity_needs_a_plain_id_and_plain_model_ids(node_id: str, models: list[str]) -> None:
    with pytest.raises(NatsAuthError):
        node_permissions("UNODE", node_id, models)


def test_the_authorization_block_lists_every_service_the_operator_and_each_node(tmp_path: Path) -> None:
    found = identities(tmp_path, {"pi-1": ["smollm2:135m-instruct-q4"]})
    text = render_authorization(found.users)
    assert set(found.seed_files) == {"ledger", "router", "gateway", "cloud", "grid", "admin", "node:pi-1"}
    for seed_file in found.seed_files.values():
        assert f'nkey: "{nkey_public_key(seed_file)}"' in text
    assert text.count("permissions:") == 6  # the operator's identity alone is unrestricted
    assert text.count("allow_responses: true") == 1  # the grid scheduler answers polls
    # Minted once: a second run gives the same keys.
    assert identities(tmp_path, {"pi-1": ["smollm2:135m-instruct-q4"]}).users == found.users


def test_nats_node_key_prints_the_seed_path_and_the_users_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        [
            "nats-node-key",
            "--keys-dir",
            str(tmp_path),
            "--node-id",
            "pi-7",
            "--model",
            "smollm2:135m-instruct-q4",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    seed_file = tmp_path / "nodes" / "pi-7.nk"
    assert f"seed: {seed_file}" in out and mode(seed_file) == 0o600
    assert f'nkey: "{nkey_public_key(seed_file)}"' in out
    assert '"koprogo.nodes.heartbeat.pi-7"' in out


def test_the_gateway_may_publish_erasure_requests_and_a_node_may_not() -> None:
    erasure = subjects.user_erasure_requested("550e8400-e29b-41d4-a716-446655440000")
    assert "koprogo.events.user.erasure_requested.>" in gateway_permissions("UGATEWAY").publish
    assert erasure.startswith("koprogo.events.user.erasure_requested.")
    assert not any(
        s.startswith("koprogo.events.user") for s in node_permissions("UNODE", "pi-1", ["m"]).publish
    )


def test_a_shared_pool_node_may_pull_the_grids_chats_for_its_models_alone() -> None:
    publish = set(node_permissions("UNODE", "pi-1", ["smollm2:135m-instruct-q4", "phi-2:2.7b-q4"]).publish)
    stream = subjects.WORK_STREAM
    for model, durable in (
        ("smollm2:135m-instruct-q4", "grid-smollm2_c135m-instruct-q4"),
        ("phi-2:2.7b-q4", "grid-phi-2_c2_d7b-q4"),
    ):
        assert durable == subjects.grid_work_durable(model)
        assert {
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{subjects.run_inference_grid(model)}",
            f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>",
            f"koprogo.deadletter.{subjects.run_inference_grid(model)}",
        } <= publish
    # Its grid consumers are its models' alone, each with exactly its own filter.
    grid_creates = sorted(s for s in publish if s.startswith(f"$JS.API.CONSUMER.CREATE.{stream}.grid-"))
    assert grid_creates == [
        # A dot in a model id is no subject token separator (`subject_token`).
        f"$JS.API.CONSUMER.CREATE.{stream}.grid-phi-2_c2_d7b-q4.koprogo.work.grid.phi-2:2~7b-q4",
        f"$JS.API.CONSUMER.CREATE.{stream}.grid-smollm2_c135m-instruct-q4.koprogo.work.grid.smollm2:135m-instruct-q4",
    ]
    assert not any(s.startswith("koprogo.work.grid") for s in publish)  # it never sends grid work
    # A copro's own node works for that copro alone: no grid chats (they come from any copro).
    copro_node = set(node_permissions("UNODE", "pi-2", ["smollm2:135m-instruct-q4"], ["copro-x"]).publish)
    assert not any(".grid-" in s or "work.grid" in s for s in copro_node)


def test_the_router_may_send_work_to_the_grid_and_the_gateway_may_not() -> None:
    assert subjects.GRID_WORK_ALL == "koprogo.work.grid.>"
    assert subjects.GRID_WORK_ALL in router_permissions("UROUTER").publish
    assert not any(s.startswith("koprogo.work.") for s in gateway_permissions("UGATEWAY").publish)


def test_what_each_nodes_key_was_minted_for_is_written_to_the_roster_beside_the_keys(tmp_path: Path) -> None:
    identities(tmp_path, {"pi-1": ["m1", "m2"]})
    identities(tmp_path, {"pi-2": ["m3"]})  # another node joins: pi-1 stays
    keys = {n: nkey_public_key(tmp_path / "nodes" / f"{n}.nk") for n in ("pi-1", "pi-2")}
    # Each entry holds the node's public key (its grid signatures), its owner (itself, when not
    # said) and the default device.
    assert parse_roster(roster_file(tmp_path).read_text()) == {
        "pi-1": NodeGrant(frozenset({"m1", "m2"}), public_key=keys["pi-1"], owner="pi-1"),
        "pi-2": NodeGrant(frozenset({"m3"}), public_key=keys["pi-2"], owner="pi-2"),
    }
    assert keys["pi-1"] != keys["pi-2"]


def test_a_node_minted_for_copros_pulls_only_their_pools_work_and_its_grant_is_in_the_roster(
    tmp_path: Path,
) -> None:
    found = identities(
        tmp_path, {"pi-x": ["m1"], "pi-s": ["m1"]}, node_copros={"pi-x": ["copro-x", "copro-z"]}
    )
    users = {u.label.split(":")[0]: u for u in found.users}
    creates = {
        name: [
            s
            for s in users[f"edge node {name}"].permissions.publish
            if s.startswith(f"$JS.API.CONSUMER.CREATE.{subjects.WORK_STREAM}")
        ]
        for name in ("pi-x", "pi-s")
    }
    pools_x = [subjects.copro_pool("copro-x"), subjects.copro_pool("copro-z")]
    assert creates["pi-x"] == [
        f"$JS.API.CONSUMER.CREATE.{subjects.WORK_STREAM}.{subjects.edge_work_durable('m1', pool)}."
        f"{subjects.run_inference_edge('m1', pool)}"
        for pool in pools_x
    ]
    # The shared pool's node may also pull the grid's chats for its model; a copro's node may not.
    assert creates["pi-s"] == [
        f"$JS.API.CONSUMER.CREATE.{subjects.WORK_STREAM}.{subjects.edge_work_durable('m1')}."
        f"{subjects.run_inference_edge('m1', subjects.SHARED_POOL)}",
        f"$JS.API.CONSUMER.CREATE.{subjects.WORK_STREAM}.grid-m1.koprogo.work.grid.m1",
    ]
    roster = parse_roster(roster_file(tmp_path).read_text())
    assert {node_id: (grant.models, grant.pools) for node_id, grant in roster.items()} == {
        "pi-x": (frozenset({"m1"}), frozenset(pools_x)),
        "pi-s": (frozenset({"m1"}), frozenset({subjects.SHARED_POOL})),
    }
    # Two (pool, model) pairs never share a consumer, whatever dashes they hold.
    assert subjects.edge_work_durable("b-c", "copro-a") != subjects.edge_work_durable("c", "copro-a-b")
    assert subjects.edge_work_durable("m", "copro-a") != subjects.edge_work_durable("pool-copro-a.m")
    with pytest.raises(NatsAuthError, match="copro id"):
        identities(tmp_path, {"pi-y": ["m1"]}, node_copros={"pi-y": ["copro.y"]})


def test_nats_node_key_for_a_copro_names_its_pool_and_tells_the_node_its_copro(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copro = "550e8400-e29b-41d4-a716-446655440000"
    argv = [
        "nats-node-key",
        "--keys-dir",
        str(tmp_path),
        "--node-id",
        "pi-8",
        "--model",
        "m1",
        "--copro",
        copro,
    ]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"""NODE_COPROS='["{copro}"]'""" in out
    assert (
        f'.{subjects.run_inference_edge("m1", subjects.copro_pool(copro))}"' in out
    )  # its consumer's filter
    assert subjects.run_inference_edge("m1") not in out
    assert parse_roster(roster_file(tmp_path).read_text())["pi-8"].pools == {subjects.copro_pool(copro)}


WILDCARDS = (
    "$JS.API.STREAM.CREATE.*",
    "$JS.API.STREAM.UPDATE.*",
    "$JS.API.STREAM.DELETE.*",
    "$JS.API.>",
    "$JS.>",
    ">",
)


def test_only_the_operator_may_create_or_update_the_koprogo_streams_and_buckets(tmp_path: Path) -> None:
    found = identities(tmp_path / "keys", {"pi-1": ["m1"]}, ["openai-gpt-4o-mini"])
    streams = [spec.name for spec in subjects.STREAMS] + [bucket_stream(b) for b in BUCKETS]
    changing = {
        user.label: [
            s
            for s in user.permissions.publish
            for name in streams
            if s in tuple(f"$JS.API.STREAM.{op}.{name}" for op in ("CREATE", "UPDATE", "DELETE", "PURGE"))
            or s.startswith(WILDCARDS)
        ]
        for user in found.users
        if user.permissions is not None
    }
    looking_up = {
        user.label: f"$JS.API.STREAM.INFO.{subjects.EVENTS_STREAM}" in user.permissions.publish
        for user in found.users
        if user.permissions is not None and user.label in ("ledger", "router")
    }
    # One exception, exactly: the grid scheduler deletes a final task's document, which purges that
    # object's chunks by subject (nats-py's object store delete); it may do so in no other stream.
    documents = f"$JS.API.STREAM.PURGE.OBJ_{subjects.DOCUMENTS_BUCKET}"
    assert changing == {label: [documents] if label == "grid" else [] for label in changing}
    assert set(changing) >= {"ledger", "router", "gateway", "grid"}
    assert looking_up == {"ledger": True, "router": True}
    assert [u.permissions for u in found.users if u.label.startswith("operator")] == [None]


def test_nats_node_key_declares_the_nodes_energy_in_the_roster_and_tells_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["nats-node-key", "--keys-dir", str(tmp_path), "--node-id", "pi-sun", "--model", "m1"]
    args = build_parser().parse_args([*base, "--power-watts", "5", "--intensity", "20", "--renewable"])
    assert args.func(args) == 0
    said = capsys.readouterr().out
    declared = EdgeFootprint(5.0, 20.0, renewable_attested=True)
    assert parse_roster(roster_file(tmp_path).read_text())["pi-sun"].footprint == declared
    assert "POWER_WATTS=5 INTENSITY_G_PER_KWH=20 RENEWABLE_ATTESTED=true" in said
    # Minting again without the flags (a stack restart, `nats-config`) keeps the declaration.
    identities(tmp_path, {"pi-sun": ["m1"]})
    args = build_parser().parse_args(base)
    assert args.func(args) == 0
    assert parse_roster(roster_file(tmp_path).read_text())["pi-sun"].footprint == declared
    assert "RENEWABLE_ATTESTED=true" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--power-watts", "-1"])


def test_a_roster_written_before_footprints_reads_as_the_default_declaration() -> None:
    old = '{"nodes": {"pi-1": {"models": ["m1"], "pools": ["shared"]}}}'
    assert parse_roster(old)["pi-1"].footprint == EdgeFootprint()
    with pytest.raises(ValueError, match="not a node roster"):
        parse_roster('{"nodes": {"pi-1": {"models": ["m1"], "footprint": {"power_watts": -3}}}}')
    with pytest.raises(ValueError, match="not a node roster"):
        parse_roster('{"nodes": {"pi-1": {"models": ["m1"], "footprint": {"solar": true}}}}')
