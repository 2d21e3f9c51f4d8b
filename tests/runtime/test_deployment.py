"""Deployment pieces that can be checked without a container engine: the CLI's environment
defaults, the permission error, the Kubernetes manifests against current schemas, compose,
the Dockerfile, the lock file and the health probe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kanidm_mail_sender.cli import _parser, main
from kanidm_mail_sender.config.files import read_regular_file
from kanidm_mail_sender.config.settings import DEFAULT_CLIENT_CONFIG, DEFAULT_MAIL_CONFIG
from kanidm_mail_sender.errors import ConfigError
from kanidm_mail_sender.ops.probe import probe
from kanidm_mail_sender.state.place import ephemeral_dir
from tests.helpers import ROOT

K8S = ROOT / "examples" / "kubernetes"


@pytest.mark.parametrize(
    ("environ", "argv", "client", "mail"),
    [
        ({}, [], DEFAULT_CLIENT_CONFIG, DEFAULT_MAIL_CONFIG),
        (
            {"KANIDM_CLIENT_CONFIG": "/data/c", "KANIDM_MAIL_SENDER_CONFIG": "/data/m"},
            [],
            Path("/data/c"),
            Path("/data/m"),
        ),
        (
            {"KANIDM_CLIENT_CONFIG": "/data/c", "KANIDM_MAIL_SENDER_CONFIG": "/data/m"},
            ["-c", "/flag/c", "--mail-sender-config", "/flag/m"],
            Path("/flag/c"),
            Path("/flag/m"),
        ),
        (
            {"KANIDM_CLIENT_CONFIG": "", "KANIDM_MAIL_SENDER_CONFIG": ""},
            [],
            DEFAULT_CLIENT_CONFIG,
            DEFAULT_MAIL_CONFIG,
        ),
    ],
)
def test_config_paths_from_environment_unless_flags(
    environ: dict[str, str], argv: list[str], client: Path, mail: Path
) -> None:
    args = _parser(environ).parse_args(argv)
    assert (args.client_config, args.mail_sender_config) == (client, mail)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_permission_error_says_how_to_fix_it_in_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "mail-sender"
    secret.write_text("x")
    secret.chmod(0)
    with pytest.raises(ConfigError) as caught:
        read_regular_file(secret)
    text = str(caught.value)
    assert "\n" not in text
    assert f"cannot be read by uid {os.geteuid()}" in text
    assert "chmod 0400" in text
    assert "fsGroup 10001" in text


def test_permission_error_text_as_the_service_user(tmp_path: Path) -> None:
    """Run as root here? Then as nobody in a child, which root can become."""
    if os.geteuid() != 0:
        pytest.skip("the test above covers a non-root run")
    secret = tmp_path / "mail-sender"
    secret.write_text("x")
    secret.chmod(0o400)
    tmp_path.chmod(0o755)
    code = (  # everything imported before the privileges go: root's Python is not nobody's
        "import os\n"
        "from pathlib import Path\n"
        "from kanidm_mail_sender.config.files import read_regular_file\n"
        "os.setgid(65534)\n"
        "os.setuid(65534)\n"
        f"read_regular_file(Path({str(secret)!r}))\n"
    )
    # Not measured: as nobody, coverage could not write its data file.
    environ = {key: value for key, value in os.environ.items() if "COV" not in key}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environ,
    )
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot be read by uid 65534 (permission denied)" in last
    assert "chown 65534 and chmod 0400" in last


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def test_kubernetes_manifests_validate_against_current_schemas() -> None:
    docs = _documents()
    assert sorted(str(doc["kind"]) for doc in docs) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodMonitor",
        "PrometheusRule",
        "Secret",
    ]
    version = kubernetes_validate.latest_version()
    for doc in docs:
        if doc["kind"] in _CRDS:
            _validate_custom(doc)
        else:
            kubernetes_validate.validate(doc, version, strict=True)


# The Prometheus Operator's resources, checked against its CRDs' schemas (tests/runtime/crds/).
_CRDS = {"PodMonitor": "podmonitor.json", "PrometheusRule": "prometheusrule.json"}


def _validate_custom(doc: dict[str, object]) -> None:
    crd = json.loads((Path(__file__).parent / "crds" / _CRDS[str(doc["kind"])]).read_text())
    assert doc["apiVersion"] == crd["apiVersion"]
    # The API server prunes unknown fields of a custom resource without a word: refuse them
    # here instead, as kubernetes-validate's strict mode does for built-in kinds.
    schema = _strict(crd["schema"])
    schema["properties"]["metadata"] = {"type": "object", "required": ["name"]}
    # Not check_schema: the CRDs' patterns are Go's (``^(?i)...``), which Python's re refuses;
    # none of those fields is used here.
    jsonschema.Draft202012Validator(schema).validate(doc)


def _strict(node: object) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    strict = {key: _strict(value) for key, value in node.items()}
    if "properties" in strict and "additionalProperties" not in strict:
        strict["additionalProperties"] = False
    return strict


def test_custom_resource_validation_refuses_what_the_server_would_drop() -> None:
    monitor = next(doc for doc in _documents() if doc["kind"] == "PodMonitor")
    spec = monitor["spec"]
    assert isinstance(spec, dict)
    with pytest.raises(jsonschema.ValidationError, match="podMetricEndpoints"):
        _validate_custom({**monitor, "spec": {**spec, "podMetricEndpoints": []}})  # a typo
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom({**monitor, "spec": {**spec, "podMetricsEndpoints": "metrics"}})


def test_deployment_is_one_replica_recreated_locked_down_and_probed() -> None:
    deployment = next(doc for doc in _documents() if doc["kind"] == "Deployment")
    spec = deployment["spec"]
    assert isinstance(spec, dict)
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]["memory"]
    # Above the daemon's own stop bound: the default grace plus the 2 s hard stop.
    assert pod["terminationGracePeriodSeconds"] > 5 + 2


def test_the_configmap_is_a_valid_config_pointing_at_the_secret(tmp_path: Path) -> None:
    docs = _documents()
    config_map = next(doc for doc in docs if doc["metadata"]["name"] == "kanidm-mail-sender-config")
    secret = next(doc for doc in docs if doc["kind"] == "Secret")
    data = config_map["data"]
    assert isinstance(data, dict)
    mail = tomllib.loads(data["mail-sender"])
    tomllib.loads(data["config"])
    keys = secret["stringData"]
    assert isinstance(keys, dict)
    for key, value in mail.items():
        if key.endswith("_file"):
            assert value == f"/secrets/{Path(value).name}"
            assert Path(value).name in keys


def test_compose_runs_the_sender_read_only_and_non_root() -> None:
    compose = yaml.safe_load((ROOT / "examples" / "compose.yaml").read_text())
    sender = compose["services"]["mail-sender"]
    assert sender["read_only"] is True
    assert sender["user"] == "10001:10001"
    assert int(sender["stop_grace_period"].rstrip("s")) > 5 + 2


def test_dockerfile_pieces() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.\d+-slim-[a-z]+\n", text)
    assert text.count("FROM ${PYTHON_IMAGE}") == 2  # build and runtime stages
    build, runtime = text.split(" AS runtime", 1)
    assert "--require-hashes -r requirements.lock" in build
    for arg in ("PIP_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT"):
        assert f"ARG {arg}=" in build
    # No build argument in the final stage: its value would be written into the history.
    assert "ARG " not in runtime
    assert "PIP_" not in runtime
    assert "/sbin/kanidm-mail-sender" in runtime  # kaniop's command
    assert "USER 10001:10001" in text
    assert "STOPSIGNAL SIGTERM" in text
    assert 'CMD ["kanidm-mail-sender", "--probe"]' in text
    assert "KANIDM_MAIL_SENDER_CONFIG=/data/kanidm/mail-sender" in text
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") - 1].startswith("#") or ignored[0] == "*"
    assert "*" in ignored  # everything but the listed sources: no .git, .venv, tests, bench


def test_lock_file_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {
        line.split("==")[0].strip().lower()
        for line in lock.splitlines()
        if re.match(r"^[A-Za-z0-9_.-]+==", line)
    }
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!;\[ ]", requirement, maxsplit=1)[0].lower()
        assert name in pinned, f"{name} is not in requirements.lock; regenerate it"
    blocks = re.split(r"\n(?=[A-Za-z])", lock.split("\n", 1)[1] if lock.startswith("#") else lock)
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)


def test_probe_without_metrics_follows_the_lock(
    config_files: Callable[..., tuple[Path, Path]], tmp_path: Path
) -> None:
    _, mail = config_files()
    state = tmp_path / "config" / "state"
    healthy, why = probe(mail, {})
    assert not healthy
    assert "no daemon" in why
    state.mkdir(parents=True, exist_ok=True)
    (state / "lock").write_text(f"{os.getpid()}\n")
    assert probe(mail, {}) == (True, f"the daemon (pid {os.getpid()}) holds {state}")


def test_probe_output_is_one_line_and_the_exit_code(
    config_files: Callable[..., tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, mail = config_files(metrics_listen="127.0.0.1:1")
    assert main(["-m", str(mail), "--probe"], environ={}) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("unhealthy: http://127.0.0.1:1/readyz:")
    assert main(["-m", "/nonexistent/mail-sender", "--probe"], environ={}) == 1
    assert "does not exist, and no daemon holds" in capsys.readouterr().out


def test_probe_without_a_config_finds_the_daemon_in_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kaniop's command names -c/-m /data/config/...; the image's health check runs with no
    flags, so it finds the daemon where a daemon without state_dir keeps its lock."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    missing = tmp_path / "no-config"
    healthy, why = probe(missing, {})
    assert not healthy
    fallback = ephemeral_dir()
    fallback.mkdir()
    (fallback / "lock").write_text(f"{os.getpid()}\n")  # this process stands in for it
    healthy, why = probe(missing, {})
    assert healthy, why
    assert str(fallback) in why


def test_the_network_policy_opens_only_the_metrics_port_of_this_pod() -> None:
    docs = _documents()
    policy = next(doc for doc in docs if doc["kind"] == "NetworkPolicy")
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert rule["ports"] == [{"protocol": "TCP", "port": ports[0]["name"]}]
    assert rule["from"]  # never open to every pod
