"""What operators alert and look at: the rules pass promtool's own tests, the Kubernetes forms
carry the same rules and dashboard, the dashboard imports as Grafana exports it, and every
metric and label that the rules and panels name is served by a real daemon's /metrics."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from tests.helpers import ROOT, start, stop, wait_for

RULES = ROOT / "examples" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "examples" / "prometheus" / "alerts.test.yaml"
DASHBOARD = ROOT / "examples" / "grafana" / "kanidm-mail-sender.json"
K8S = ROOT / "examples" / "kubernetes"

# Labels that the scrape adds, not the daemon.
TARGET_LABELS = {"job", "instance"}
_SELECTOR = re.compile(r"\b((?:kanidm_mail_sender_\w+)|up)\b\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def test_the_rules_are_valid() -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_the_rules_fire_when_they_should_and_only_then() -> None:
    """alerts.test.yaml: stale queue, relay paused, sender down and absent, mails failing,
    Kanidm failing, unknown kinds and expired links, each firing and not firing."""
    done = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_says_how_bad_what_and_where_to_look_first() -> None:
    rules = _alerts()
    assert {rule["labels"]["severity"] for rule in rules} == {"warning", "critical"}
    for rule in rules:
        assert rule["annotations"]["summary"]
        assert "check first" in rule["annotations"]["description"].lower(), rule["alert"]


def test_the_prometheusrule_carries_the_rules_unchanged() -> None:
    resource = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())
    assert resource["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_the_dashboard_configmap_is_the_dashboard() -> None:
    config_map = yaml.safe_load((K8S / "grafana-dashboard.yaml").read_text())
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    provisioned = json.loads(config_map["data"]["kanidm-mail-sender.json"])
    exported = json.loads(DASHBOARD.read_text())
    for key in ("__inputs", "__elements", "__requires"):
        exported.pop(key)
    assert provisioned == exported


def test_the_dashboard_is_a_grafana_10_export_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 37  # Grafana 10.0's
    assert dashboard["id"] is None
    assert dashboard["uid"]
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    grafana = next(r for r in dashboard["__requires"] if r["id"] == "grafana")
    assert grafana["version"].startswith("10.")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used_types = {p["type"] for p in panels}
    assert used_types <= {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(box["x"], box["x"] + box["w"])
            for y in range(box["y"], box["y"] + box["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert 'job=~"$job"' in target["expr"], panel["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for subject in ("throughput", "queue", "outcomes", "relay", "pauses", "kanidm errors"):
        assert subject in titles


@pytest.fixture
def metrics_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_every_metric_and_label_the_rules_and_dashboard_use_is_served(
    config_files: Callable[..., tuple[Path, Path]],
    daemon_command: Callable[..., list[str]],
    kanidm: KanidmStandIn,
    metrics_port: int,
) -> None:
    kanidm.queue_test_message("alice@example.com")
    client, mail = config_files(metrics_listen=f"127.0.0.1:{metrics_port}")
    proc = await start(daemon_command(client, mail))
    try:
        await wait_for(lambda: kanidm.unsent() == [], timeout=30)
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        code, err = await stop(proc)
    assert code == ExitCode.OK, err
    served: dict[str, set[str]] = {"up": set()}  # up: Prometheus's own
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            served.setdefault(sample.name, set()).update(sample.labels)
    used = _expressions()
    assert len(used) > 25
    for where, expr, legend in used:
        names = set()
        for name, matchers in _SELECTOR.findall(expr):
            assert name in served, f"{where}: {name} is not served"
            names.add(name)
            for label in _MATCHER.findall(matchers):
                assert label in served[name] | TARGET_LABELS, f"{where}: {name} has no {label}"
        grouped = {
            label.strip() for labels in _GROUPING.findall(expr) for label in labels.split(",")
        }
        available = TARGET_LABELS.union(*(served[name] for name in names))
        for label in (grouped | set(_LEGEND.findall(legend))) - {""}:
            assert label in available, f"{where}: no metric of {expr!r} has {label}"


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert len(groups) == 1
    rules: list[dict[str, Any]] = groups[0]["rules"]
    return rules


def _expressions() -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) for every rule, panel target and variable query."""
    found = [(f"rule {r['alert']}", r["expr"], "") for r in _alerts()]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found.append((f"panel {panel['title']}", target["expr"], target["legendFormat"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"variable {variable['name']}", variable["definition"], ""))
    return found
