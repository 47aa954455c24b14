"""The node roster for the grid: each node's public key, owner and device, as the commands record them,
and the keys `koprogo up` hands out (the scheduler's seed, its public key to every node)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from koprogo_cli import stack as stack_module
from koprogo_cli import stack_nats
from koprogo_cli.main import build_parser
from koprogo_cli.nats_auth import identities
from koprogo_cli.nats_keys import grid_scheduler_public_key, recorded_grant, roster_file
from koprogo_cli.nats_permissions import grid_permissions, node_permissions
from koprogo_cli.served_models import ServedModel
from koprogo_cli.stack import OWN_NODES_OWNER, Service, Stack, StackError, own_device
from koprogo_shared import subjects
from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.kv_buckets import BUCKETS
from koprogo_shared.local_tokens import mint_token
from koprogo_shared.nats_connection import nkey_public_key
from koprogo_shared.node_roster import DeviceProfile, NodeGrant, parse_roster, render_roster


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def test_a_roster_entry_keeps_its_key_owner_and_device_and_always_writes_the_device() -> None:
    grants = {
        "pi-sun": NodeGrant(
            frozenset({"m1"}),
            public_key="UKEY",
            owner="coop-tilleuls",
            device=DeviceProfile("pi4", 2.1, 50.85, 4.35),
        ),
        "bare": NodeGrant(frozenset({"m2"})),
    }
    text = render_roster(grants)
    assert parse_roster(text) == grants
    written = json.loads(text)["nodes"]
    assert written["bare"]["device"] == {
        "device_class": "unknown",
        "idle_watts": 2.7,
        "latitude": None,
        "longitude": None,
    }
    assert "public_key" not in written["bare"] and "owner" not in written["bare"]
    assert written["pi-sun"]["owner"] == "coop-tilleuls" and written["pi-sun"]["public_key"] == "UKEY"
    assert grants["bare"].owner_of("bare") == "bare"
    # An entry written before the grid reads with the defaults; a half location is refused.
    assert parse_roster('{"nodes": {"old": {"models": ["m1"]}}}')["old"].device == DeviceProfile()
    with pytest.raises(ValueError, match="not a node roster"):
        parse_roster('{"nodes": {"x": {"models": ["m1"], "device": {"latitude": 50.0}}}}')


def test_nats_node_key_records_the_nodes_key_owner_and_device_and_a_re_mint_keeps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["nats-node-key", "--keys-dir", str(tmp_path), "--node-id", "pi-sun", "--model", "m1"]
    declared = ["--owner", "coop-tilleuls", "--device-class", "pi4", "--idle-watts", "2.1"]
    assert run([*base, *declared, "--latitude", "50.85", "--longitude", "4.35"]) == 0
    said = capsys.readouterr().out
    grant = parse_roster(roster_file(tmp_path).read_text())["pi-sun"]
    assert grant.public_key == nkey_public_key(tmp_path / "nodes" / "pi-sun.nk")
    assert grant.owner == "coop-tilleuls"
    assert grant.device == DeviceProfile("pi4", 2.1, 50.85, 4.35)
    scheduler_key = nkey_public_key(tmp_path / "grid.nk")
    assert f"GRID_SCHEDULER_PUBLIC_KEY={scheduler_key}" in said and "DEVICE_CLASS=pi4" in said
    assert (tmp_path / "grid.pub").read_text() == scheduler_key  # no newline: a secretKeyRef's value
    # Minting again without the flags (nats-config, a stack restart) keeps the declaration.
    assert run(base) == 0
    identities(tmp_path, {"pi-sun": ["m1"]})
    assert parse_roster(roster_file(tmp_path).read_text())["pi-sun"] == grant
    assert "DEVICE_CLASS=pi4" in capsys.readouterr().out
    # Device flags declare the device whole: what they leave out takes the defaults.
    assert run([*base, "--device-class", "x86"]) == 0
    assert recorded_grant(tmp_path, "pi-sun") == NodeGrant(
        frozenset({"m1"}), public_key=grant.public_key, owner="coop-tilleuls", device=DeviceProfile("x86")
    )


def test_a_node_minted_without_an_owner_is_its_own_owner_with_the_default_device(tmp_path: Path) -> None:
    assert run(["nats-node-key", "--keys-dir", str(tmp_path), "--node-id", "pi-1", "--model", "m1"]) == 0
    grant = recorded_grant(tmp_path, "pi-1")
    assert grant is not None and grant.owner == "pi-1" and grant.device == DeviceProfile()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--latitude", "50.8"], "--latitude and --longitude go together"),
        (["--idle-watts", "9"], "idle draw of 9 W above its power under load (7 W)"),
    ],
)
def test_a_device_that_cannot_be_is_refused_before_anything_is_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    argv = ["nats-node-key", "--keys-dir", str(tmp_path), "--node-id", "pi-1", "--model", "m1", *flags]
    assert run(argv) == 2
    assert said in capsys.readouterr().err
    assert recorded_grant(tmp_path, "pi-1") is None


def test_out_of_range_device_flags_are_usage_errors() -> None:
    base = ["nats-node-key", "--node-id", "pi-1", "--model", "m1"]
    for flags in (["--latitude", "91", "--longitude", "0"], ["--idle-watts", "-1"], ["--owner", "a b"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*base, *flags])


def test_node_join_records_the_grid_identity_and_tells_the_node_the_schedulers_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["node", "join", "--data-dir", str(tmp_path), "--node-id", "pi-cave", "-m", "m1"]
    assert run([*argv, "--owner", "alice", "--device-class", "pi4", "--power-watts", "6"]) == 0
    out = capsys.readouterr().out
    keys_dir = tmp_path / "secrets" / "nats"
    grant = recorded_grant(keys_dir, "pi-cave")
    assert grant is not None
    assert grant.owner == "alice" and grant.device.device_class == "pi4"
    assert grant.public_key == nkey_public_key(keys_dir / "nodes" / "pi-cave.nk")
    scheduler_key = nkey_public_key(keys_dir / "grid.nk")
    (run_line,) = [line for line in out.splitlines() if "4. run it" in line]
    assert f"GRID_SCHEDULER_PUBLIC_KEY={scheduler_key}" in run_line
    assert "DEVICE_CLASS=pi4" in run_line and "POWER_WATTS=6" in run_line
    assert run_line.endswith("--grid`")  # it joins the grid, where its owner counts
    assert f"owner alice, device pi4, its reports are checked against its key {grant.public_key}" in out
    # Joining it again without the flags keeps its owner and device.
    assert run(argv) == 0
    assert recorded_grant(keys_dir, "pi-cave") == grant


def test_the_grid_identity_keeps_the_trust_book_and_publishes_trust_a_node_does_neither() -> None:
    grid = set(grid_permissions("UGRID").publish)
    book = f"KV_{subjects.GRID_NODES_BUCKET}"
    assert subjects.GRID_NODES_BUCKET in BUCKETS
    assert {
        f"$KV.{subjects.GRID_NODES_BUCKET}.>",
        f"$JS.API.STREAM.INFO.{book}",
        f"$JS.API.DIRECT.GET.{book}.>",
    } <= grid
    assert subjects.GRID_NODE_TRUST_ALL in grid
    assert "koprogo.events.task.verifying.*" in grid
    node = node_permissions("UNODE", "pi-1", ["m1"]).publish
    assert not any(subjects.GRID_NODES_BUCKET in s or s.startswith("koprogo.events.grid.") for s in node)


def test_a_token_names_the_nodes_its_holder_operates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secrets" / "jwt-secret"
    secret.parent.mkdir(parents=True)
    secret.write_text("s" * 48)
    secret.chmod(0o600)
    argv = ["token", "--data-dir", str(tmp_path), "--user", "alice", "--node", "pi-1", "--node", "pi-2"]
    assert run([*argv, "--node", "pi-1"]) == 0
    captured = capsys.readouterr()
    claims = jwt.decode(captured.out.strip(), "s" * 48, algorithms=["HS256"], audience="koprogo-symbiose")
    assert claims["nodes"] == ["pi-1", "pi-2"] and claims["sub"] == "alice"
    assert "operator of nodes pi-1, pi-2" in captured.err
    # Without --node the claim is absent, as before.
    plain = mint_token("s" * 48, user="bob", copros=[], scopes=["mcp:read"])
    assert "nodes" not in jwt.decode(plain, "s" * 48, algorithms=["HS256"], audience="koprogo-symbiose")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["token", "--user", "a", "--node", "pi 1"])


def test_koprogo_ups_own_nodes_are_declared_with_the_device_its_environment_names() -> None:
    assert own_device({}) == DeviceProfile()
    env = {"DEVICE_CLASS": "pi4", "IDLE_WATTS": "2", "LATITUDE": "50.8", "LONGITUDE": "4.3"}
    assert own_device(env) == DeviceProfile("pi4", 2.0, 50.8, 4.3)
    with pytest.raises(StackError, match="LATITUDE and LONGITUDE go together"):
        own_device({"LATITUDE": "50.8"})
    with pytest.raises(StackError, match="DEVICE_CLASS 'pi 4'"):
        own_device({"DEVICE_CLASS": "pi 4"})


class FakeNats:
    """The embedded nats-server's place in `Stack.start`: its authorization block kept, nothing run."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        authorization: str,
        host: str,
        monitor_port: int | None = None,
        prof_port: int | None = None,
        jetstream_domain: str | None = None,
        leafnodes: str = "",
    ) -> None:
        self.url = f"nats://127.0.0.1:{port}"
        self.authorization = authorization
        self.monitor_port = monitor_port
        self.prof_port = prof_port
        self.proc = None

    def start(self) -> FakeNats:
        return self


def test_koprogo_up_hands_the_schedulers_seed_to_it_and_its_public_key_to_every_node_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NATS_URL", "DATABASE_URL", "DEVICE_CLASS", "POWER_WATTS", "JWT_SECRET_FILE", "JWKS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused")
    monkeypatch.setattr(stack_nats, "EmbeddedNats", FakeNats)
    monkeypatch.setattr(Stack, "_declare_streams", lambda self, url: None)
    monkeypatch.setattr(stack_module, "content_keys_env", lambda data_dir: {})
    monkeypatch.setattr(Stack, "_wait_ready", lambda self, service, timeout=0: None)
    launched: list[Service] = []
    monkeypatch.setattr(Stack, "_launch", lambda self, service: launched.append(service))
    # A node of another machine joined earlier: the stack keeps its owner, its own nodes are `local`.
    keys_dir = tmp_path / "secrets" / "nats"
    assert (
        run(
            [
                "node",
                "join",
                "--data-dir",
                str(tmp_path),
                "--node-id",
                "pi-cave",
                "-m",
                "m1",
                "--owner",
                "bob",
            ]
        )
        == 0
    )
    extra = ServedModel("qwen2.5-0.5b", tmp_path / "qwen.gguf")
    stack = Stack(tmp_path, log=lambda line: None, models=[extra])
    stack.node_id = "this-host-bundled"
    stack.start()

    env: dict[str, dict[str, Any]] = {service.name: service.env for service in launched}
    scheduler = env["grid-scheduler"]
    scheduler_key = nkey_public_key(Path(scheduler["GRID_SIGNING_SEED_FILE"]))
    assert (
        scheduler["GRID_SIGNING_SEED_FILE"] == scheduler["NATS_NKEY_SEED_FILE"] == str(keys_dir / "grid.nk")
    )
    assert scheduler_key == grid_scheduler_public_key(keys_dir)
    nodes = [name for name in env if name.startswith("edge-node")]
    assert nodes == ["edge-node", f"edge-node-{extra.node_id}"]
    for name in nodes:
        assert env[name]["GRID_SCHEDULER_PUBLIC_KEY"] == scheduler_key
        assert env[name]["DEVICE_CLASS"] == stack.device.device_class
    roster = parse_roster(roster_file(keys_dir).read_text())
    for node_id, service in (
        ("this-host-bundled", "edge-node"),
        (extra.node_id, f"edge-node-{extra.node_id}"),
    ):
        own = roster[node_id]
        assert (
            own.owner == OWN_NODES_OWNER and own.device == stack.device and own.footprint == EdgeFootprint()
        )
        assert own.public_key == nkey_public_key(Path(env[service]["NATS_NKEY_SEED_FILE"]))
    assert roster["pi-cave"].owner == "bob"


def test_nats_config_writes_and_names_the_public_keys_others_check_signatures_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "authorization.conf"
    assert run(["nats-config", "--keys-dir", str(tmp_path), "--node", "pi-1=m1", "--out", str(out)]) == 0
    said = capsys.readouterr().err
    scheduler, ledger = (nkey_public_key(tmp_path / f"{name}.nk") for name in ("grid", "ledger"))
    assert (tmp_path / "grid.pub").read_text() == scheduler and (
        tmp_path / "ledger.pub"
    ).read_text() == ledger
    assert f"GRID_SCHEDULER_PUBLIC_KEY={scheduler}" in said
    assert f"the token ledger's heads are signed with {ledger}" in said
    assert recorded_grant(tmp_path, "pi-1") is not None


def test_with_a_nats_server_of_its_own_koprogo_up_still_gives_the_scheduler_a_seed_and_the_nodes_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No keys on that server (anonymous services), yet assignments are signed with a key the nodes know.
    for name in ("DEVICE_CLASS", "JWT_SECRET_FILE", "JWKS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused")
    monkeypatch.setattr(Stack, "_check_durability", lambda self, url: None)
    monkeypatch.setattr(stack_module, "content_keys_env", lambda data_dir: {})
    monkeypatch.setattr(Stack, "_wait_ready", lambda self, service, timeout=0: None)
    launched: list[Service] = []
    monkeypatch.setattr(Stack, "_launch", lambda self, service: launched.append(service))
    stack = Stack(tmp_path, log=lambda line: None)
    stack.start()
    env = {service.name: service.env for service in launched}
    assert "NATS_NKEY_SEED_FILE" not in env["grid-scheduler"]
    seed = Path(env["grid-scheduler"]["GRID_SIGNING_SEED_FILE"])
    assert env["edge-node"]["GRID_SCHEDULER_PUBLIC_KEY"] == nkey_public_key(seed)
    assert "NATS_NKEY_SEED_FILE" not in env["edge-node"] and env["edge-node"]["DEVICE_CLASS"] == "unknown"
