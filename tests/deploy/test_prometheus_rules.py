"""The Prometheus rules (deploy/prometheus/alerts.yml, recording.yml) and the Prometheus dashboard
(deploy/grafana/dashboards/koprogo-operations.json) checked with Prometheus's own tool, promtool
(Debian's `prometheus` package; scripts/check-prerequisites.sh installs it for `make test`):

- `promtool check rules` accepts both rule files;
- `promtool test rules` passes the unit tests in deploy/prometheus/tests/, where every alert fires
  on a synthetic series showing its problem and stays quiet on a healthy one;
- every PromQL expression of the dashboard parses (each is written, with Grafana's variables
  replaced, as a recording rule into a generated file that `promtool check rules` reads);
- every metric an expression names is one the services declare (their prometheus_client metrics,
  read from the registry after importing every module that declares some), one of
  prometheus-nats-exporter's (named with the prefix its arguments in compose, the k8s manifests and
  the NATS Helm chart give it, which must be one), or a recording rule; every `job` named is a job of prometheus.yml.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS, RECORDING = PROMETHEUS / "alerts.yml", PROMETHEUS / "recording.yml"
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
OPERATIONS = DASHBOARDS / "koprogo-operations.json"

# The numeric fields of the NATS server's /varz that the dashboard and the rules may name:
# prometheus-nats-exporter (`-varz`) serves each as <prefix>_varz_<field>.
NATS_VARZ_FIELDS = {"connections", "in_msgs", "out_msgs", "in_bytes", "out_bytes", "slow_consumers",
                    "mem", "cpu", "subscriptions"}  # fmt: skip
# The exporter's prefix when no -prefix is given (its collector.CoreSystem).
NATS_EXPORTER_DEFAULT_PREFIX = "gnatsd"
# The exporter's arguments in the official NATS Helm chart (nats-io/k8s,
# helm/charts/nats/files/stateful-set/prom-exporter-container.yaml): written in the template,
# not in values; only promExporter.patch/merge in our values file can change them.
HELM_CHART_EXPORTER_ARGS = ["-port=7777", "-connz", "-routez", "-subz", "-varz", "-prefix=nats",
                            "-use_internal_server_id", "-jsz=all", "http://localhost:8222/"]  # fmt: skip
COMPOSE_FILE = ROOT / "deploy" / "compose" / "docker-compose.yml"
K8S_NATS = ROOT / "deploy" / "k8s" / "base" / "nats.yaml"
HELM_VALUES = ROOT / "deploy" / "k8s" / "nats-helm-values.yaml"
# Series Prometheus itself writes for every scrape target.
SCRAPE_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

# Grafana's variables, replaced by values of the right shape before promtool reads an expression.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "6h",
    "$route": ".*",
    "$model": ".*",
    "$deployment": ".*",
}

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                "and", "or", "unless", "inf", "nan"}  # fmt: skip


def exporter_prefix(args: list[str]) -> str:
    """The prefix prometheus-nats-exporter's arguments give its series (Go's flag syntax:
    -prefix=X, -prefix X, or with two dashes)."""
    prefix = NATS_EXPORTER_DEFAULT_PREFIX
    for index, arg in enumerate(args):
        name, equals, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "prefix":
            prefix = value if equals else args[index + 1]
    return prefix


def helm_exporter_args(values: dict[str, Any]) -> list[str]:
    """The chart's exporter arguments after our values' promExporter.merge / .patch (JSON patch
    on the container; the ops on /args that replace or append)."""
    exporter = values.get("promExporter") or {}
    args = list(exporter.get("merge", {}).get("args", HELM_CHART_EXPORTER_ARGS))
    for op in exporter.get("patch") or []:
        if op["path"] == "/args" and op["op"] in {"add", "replace"}:
            args = list(op["value"])
        elif op["path"].startswith("/args/") and op["op"] == "add":
            where = op["path"].removeprefix("/args/")
            args.insert(len(args) if where == "-" else int(where), op["value"])
    return args


def exporter_args() -> dict[str, list[str]]:
    """Each deployment's prometheus-nats-exporter arguments: compose, the k8s manifests, Helm."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    (statefulset,) = [d for d in yaml.safe_load_all(K8S_NATS.read_text(encoding="utf-8"))
                      if d and d["kind"] == "StatefulSet"]  # fmt: skip
    (k8s,) = [c for c in statefulset["spec"]["template"]["spec"]["containers"]
              if "prometheus-nats-exporter" in c["image"]]  # fmt: skip
    values = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))
    assert values["promExporter"]["enabled"], "the Helm values run no exporter"
    return {
        "compose": compose["services"]["nats-exporter"]["command"],
        "k8s": k8s["args"],
        "helm": helm_exporter_args(values),
    }


def nats_exporter_metrics() -> set[str]:
    """What the exporter serves from /varz, under the one prefix every deployment gives it."""
    prefixes = {where: exporter_prefix(args) for where, args in exporter_args().items()}
    assert len(set(prefixes.values())) == 1, (
        f"prometheus-nats-exporter's series are named differently per deployment ({prefixes}): "
        "one dashboard cannot read them all"
    )
    (prefix,) = set(prefixes.values())
    return {f"{prefix}_varz_{field}" for field in NATS_VARZ_FIELDS}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    assert found, (
        "promtool is missing: install Debian's `prometheus` package (apt-get install prometheus; "
        "scripts/check-prerequisites.sh does it when `make test` runs as root)"
    )
    return found


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def rules(path: Path) -> list[dict[str, Any]]:
    return [
        rule
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
    ]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules(ALERTS)}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_expressions() -> dict[str, str]:
    """'<dashboard uid> <panel id><refId>' -> PromQL, for every Prometheus target of every dashboard,
    and the label_values() metrics of the query variables."""
    found: dict[str, str] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if "expr" in target:
                    found[f"{dashboard['uid']} {panel['id']}{target['refId']}"] = target["expr"]
        for variable in dashboard["templating"]["list"]:
            definition = variable.get("definition", "")
            if match := re.fullmatch(r"label_values\((\w+),\s*\w+\)", definition):
                found[f"{dashboard['uid']} ${variable['name']}"] = match.group(1)
    return found


def with_values(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr.replace("$labels", "").replace("$value", ""), f"a Grafana variable is left: {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: strings, label matchers, ranges and the label
    lists of by/without/on/ignoring/group_* removed, identifiers followed by '(' are functions."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        if not match.group(2) and match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def declared_metrics() -> set[str]:
    """Every series name the services can expose: import each module that declares prometheus_client
    metrics (they register in the process-wide REGISTRY at import) and read the registry."""
    for source in sorted([*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/*/src/**/*.py")]):
        text = source.read_text(encoding="utf-8")
        if "prometheus_client" in text and re.search(
            r"\b(Counter|Gauge|Histogram|Summary|\w+MetricFamily)\(\s*\"koprogo_", text
        ):
            src = next(parent for parent in source.parents if parent.name == "src")
            importlib.import_module(".".join(source.relative_to(src).with_suffix("").parts))
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("", "_sum", "_count"), "info": ("_info",), "stateset": ("",), "unknown": ("",)}  # fmt: skip
    return {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes[family.type]}


def declared_labels() -> dict[str, set[str]]:
    """Metric name (without _total/_bucket/...) -> the label names its service declares. prometheus_client
    keeps them in private attributes (`_labelnames` of a metric or of a custom collector's family);
    no public API lists the labels of a metric with no child yet."""
    declared_metrics()
    found: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):
        if hasattr(collector, "_labelnames") and hasattr(collector, "_name"):
            found[collector._name] = set(collector._labelnames)
        else:
            for family in collector.collect():
                found[family.name] = set(getattr(family, "_labelnames", ()))
    return found


def base_name(series: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", series)


def labels_used(expr: str) -> set[str]:
    """Label names an expression matches on or aggregates by."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    used = set()
    for matchers in re.findall(r"\{([^}]*)\}", text):
        used |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        used |= {label.strip() for label in clause.split(",") if label.strip()}
    return used


def test_the_rule_files_pass_promtool_check(promtool: str) -> None:
    result = run([promtool, "check", "rules", str(ALERTS), str(RECORDING)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_on_its_problem_and_stays_quiet_when_healthy(promtool: str) -> None:
    assert UNIT_TESTS, "no unit test file in deploy/prometheus/tests/"
    result = run([promtool, "test", "rules", *map(str, UNIT_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr

    fires: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts()) - fires == set(), "alerts no unit test sees firing"
    assert set(alerts()) - quiet == set(), "alerts no unit test sees quiet"


def test_every_alert_says_what_it_means_and_where_to_look() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
    named = set(alerts())
    assert {"KoproGoEdgeNodeDown", "KoproGoEdgeNodeStale", "KoproGoLedgerLagGrowing",
            "KoproGoCloudDeploymentCoolingDown", "KoproGoServiceDown", "KoproGoGateway5xxRatioHigh"} <= named  # fmt: skip


def test_recording_rules_are_named_level_metric_operations() -> None:
    for rule in rules(RECORDING):
        level, metric, operations = rule["record"].split(":")
        assert re.fullmatch(r"[a-z_]+", level) and re.fullmatch(r"[a-z0-9_]+", operations), rule["record"]
        selected = metric_names(rule["expr"])
        assert any(
            metric.startswith(name.removesuffix("_total").removesuffix("_bucket")) for name in selected
        ), f"{rule['record']}: the metric part names none of {selected}"
        for label in level.split("_"):
            assert label in {"job", "route", "status", "reason", "target", "model", "deployment"}, rule[
                "record"
            ]


def test_every_dashboard_expression_parses(promtool: str, tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    assert len([key for key in expressions if key.startswith("koprogo-operations ")]) >= 40
    generated = {"groups": [{"name": "dashboard-expressions", "rules": [
        {"record": f"dashboard:check_{index}:expr", "expr": with_values(expr)}
        for index, expr in enumerate(expressions.values())
    ]}]}  # fmt: skip
    rule_file = tmp_path / "dashboard-expressions.yml"
    rule_file.write_text(yaml.safe_dump(generated), encoding="utf-8")
    result = run([promtool, "check", "rules", str(rule_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_named_is_one_a_service_or_exporter_exposes() -> None:
    known = (
        declared_metrics()
        | nats_exporter_metrics()
        | SCRAPE_METRICS
        | {r["record"] for r in rules(RECORDING)}
    )
    used: dict[str, set[str]] = {}
    for where, expr in [*dashboard_expressions().items(),
                        *((f"rule {r.get('alert') or r['record']}", r["expr"]) for r in rules(ALERTS) + rules(RECORDING))]:  # fmt: skip
        for name in metric_names(with_values(expr)):
            used.setdefault(name, set()).add(where)
    unknown = {name: sorted(where) for name, where in used.items() if name not in known}
    assert unknown == {}, "metrics no service declares (koprogo_*) nor the NATS exporter exposes"
    assert "koprogo_gateway_http_requests_total" in used and "koprogo_router_node_up" in used
    assert used.keys() & nats_exporter_metrics(), "no expression reads the NATS exporter's series"


def test_the_exporter_prefix_reader_follows_gos_flag_syntax() -> None:
    assert exporter_prefix(["-varz", "http://127.0.0.1:8222"]) == "gnatsd"
    assert exporter_prefix(["-prefix=nats", "-varz"]) == "nats"
    assert exporter_prefix(["--prefix", "x", "-varz"]) == "x"
    patched = {"promExporter": {"patch": [{"op": "replace", "path": "/args", "value": ["-varz"]}]}}
    assert exporter_prefix(helm_exporter_args(patched)) == "gnatsd"
    assert exporter_prefix(helm_exporter_args({"promExporter": {"enabled": True}})) == "nats"


def test_every_label_used_is_one_the_metric_declares() -> None:
    """A `by (node_id)` on a metric labelled `node` gives one empty series, not an error: caught here
    for every expression whose metrics are all the services' own (target labels job and instance
    are Prometheus's, le and quantile the histograms')."""
    declared = declared_labels()
    checked = 0
    for where, expr in [*dashboard_expressions().items(),
                        *((r.get("alert") or r["record"], r["expr"]) for r in rules(ALERTS) + rules(RECORDING))]:  # fmt: skip
        bases = {base_name(name) for name in metric_names(with_values(expr))}
        if not bases or not bases <= set(declared):
            continue
        allowed = set().union(*(declared[b] for b in bases)) | {"job", "instance", "le", "quantile"}
        assert labels_used(expr) <= allowed, (
            f"{where}: {sorted(labels_used(expr) - allowed)} not labels of {bases}"
        )
        checked += 1
    assert checked >= 45


def test_every_job_named_is_scraped_by_prometheus_yml() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {scrape["job_name"] for scrape in config["scrape_configs"]}
    assert set(config["rule_files"]) == {"alerts.yml", "recording.yml"}
    texts = [*dashboard_expressions().values(), *(r["expr"] for r in rules(ALERTS) + rules(RECORDING))]
    for expr in texts:
        for op, value in re.findall(r'\bjob\s*(=~|!=|=)\s*"([^"]*)"', expr):
            matched = {job for job in jobs if re.fullmatch(value, job)}
            assert matched or op == "!=", (
                f"job{op}{value!r} matches no job of prometheus.yml ({sorted(jobs)}): {expr}"
            )


def test_the_metric_name_reader_finds_names_and_skips_functions_and_labels() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route=~"x", le!="+Inf"}[5m])))'
            ' / on (job) group_left (route) b_total offset 5m > bool 0 and c or vector(0)')  # fmt: skip
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert labels_used(expr) == {"le", "route", "job"}
