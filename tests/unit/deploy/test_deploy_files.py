"""Deployment files: compose, Kubernetes, Prometheus rules and the Grafana dashboard
are valid, wired to each other, and name only metrics the services export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.localstack import REDIS_PERSISTENCE
from services.audit.__main__ import AuditGauges
from services.common.metrics import ApiMetrics, Metrics, ReadModelMetrics

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
SERVICES = ("circulation", "captures", "allocation", "withdrawal", "cashout", "netting", "fraud")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (deploy/install-system.sh installs it)")
    return path


def exported_metric_names() -> set[str]:
    suffixes = {"counter": ("_total",), "gauge": ("",),
                "histogram": ("_bucket", "_count", "_sum")}
    names = {"up"}
    for registry in (Metrics("probe").registry, AuditGauges().registry,
                     ReadModelMetrics().registry, ApiMetrics().registry):
        for family in registry.collect():  # families exist before any label is used
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def referenced_metrics(text: str) -> set[str]:
    return set(re.findall(r"\b(commission_[a-z_]+)", text))


def test_compose_file_is_valid_and_wires_every_part():
    out = subprocess.run([tool("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "config"],
                         capture_output=True, text=True, check=True)
    services = yaml.safe_load(out.stdout)["services"]
    assert {"kafka", "redis", "prometheus", "grafana", "audit", "readmodel", "api",
            *SERVICES} <= set(services)
    assert services["api"]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    for name in SERVICES:
        assert services[name]["command"] == ["python", "-m", f"services.{name}"]
        env = services[name]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092" and env["OPS_BIND_HOST"] == "0.0.0.0"
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert targets == {f"{s}:9100" for s in (*SERVICES, "audit", "readmodel", "api")}
    assert services["api"]["environment"]["API_OPS_PORT"] == "9100"  # /metrics is not public
    # the deployed Redis keeps its data as the local one (deploy/localstack.py says why)
    assert services["redis"]["command"] == ["redis-server", *REDIS_PERSISTENCE]


def test_alert_rules_pass_promtool_check_and_unit_tests():
    promtool = tool("promtool")
    rules = DEPLOY / "prometheus" / "alerts.yml"
    subprocess.run([promtool, "check", "rules", str(rules)], check=True, capture_output=True)
    out = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=rules.parent,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alerts_and_dashboard_use_only_exported_metrics():
    exported = exported_metric_names()
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "commission.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))  # rows have none
    used = referenced_metrics(alerts) | referenced_metrics(exprs)
    assert used and used <= exported, used - exported
    names = {rule["alert"] for group in yaml.safe_load(alerts)["groups"]
             for rule in group["rules"]}
    runbook = (ROOT / "docs" / "runbook.md").read_text().lower()
    for name in names:
        assert f"## {name.lower()}" in runbook, f"no runbook section for {name}"


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s" / "base").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_have_probes_resources_and_budgets():
    docs = k8s_documents()
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    for resource in kustomization["resources"]:
        assert (DEPLOY / "k8s" / "base" / resource).exists()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    budgets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert {*SERVICES, "readmodel", "api"} <= set(deployments)
    assert {*SERVICES, "readmodel", "api"} <= set(budgets)
    for name in ("readmodel", "api"):
        [container] = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert {"name": "REDIS_URL", "value": "redis://redis:6379/0"} in container["env"]
    for name, d in deployments.items():
        pod = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == name
        if name in (*SERVICES, "audit", "readmodel", "api"):  # every one exports metrics
            assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        [container] = pod["spec"]["containers"]
        assert container["readinessProbe"] and container["livenessProbe"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        if name in SERVICES:
            assert container["command"] == ["python", "-m", f"services.{name}"]
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert budgets[name]["spec"]["selector"]["matchLabels"] == \
                d["spec"]["selector"]["matchLabels"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    partitions = int(config["data"]["COMMISSION_PARTITIONS"])
    prod = yaml.safe_load((DEPLOY / "k8s" / "overlays" / "prod" / "kustomization.yaml").read_text())
    for replica in prod["replicas"]:
        assert replica["name"] in deployments
        assert replica["count"] <= partitions, "replicas beyond the partitions sit idle"
    # every process that talks to Kafka logs in as itself when the cluster needs a login
    for name in (*SERVICES, "readmodel", "api", "audit"):
        pod = deployments[name]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        login = next(v for v in pod["volumes"] if v["name"] == "kafka-login")
        assert login["secret"]["secretName"] == f"commission-kafka-{name}"
        assert login["secret"]["optional"] is True
        mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-login")
        # read as files from the mounted secret, never as environment values
        assert env["KAFKA_SASL_USERNAME_FILE"]["value"] == f"{mount['mountPath']}/username"
        assert env["KAFKA_SASL_PASSWORD_FILE"]["value"] == f"{mount['mountPath']}/password"
        assert "KAFKA_SASL_USERNAME" not in env and "KAFKA_SASL_PASSWORD" not in env
    # production defaults in the base; only the dev overlay turns them off, on purpose
    assert config["data"]["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["data"]["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["data"]["COMMISSION_ENV"] == "production"
    dev = yaml.safe_load((DEPLOY / "k8s" / "overlays" / "dev" / "kustomization.yaml").read_text())
    assert dev["resources"] == ["../../base"]
    [patch] = dev["patches"]
    ops = {op["path"]: op.get("value") for op in yaml.safe_load(patch["patch"])}
    assert ops["/data/KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert ops["/data/COMMISSION_ENV"] == "development"


def test_acl_commands_name_operations_kafka_acls_knows():
    from deploy.acls import bindings, commands
    from services.common.settings import Settings

    settings = Settings()
    lines = commands(settings, "kafka:9092")
    assert len(lines) == len(bindings(settings))
    known = {"Read", "Write", "Create", "Describe", "DescribeConfigs", "AlterConfigs"}
    used = {re.search(r"--operation (\S+)", line).group(1) for line in lines}
    assert used <= known, used - known
    # the stages' money topics: written by their stage only
    writers = {re.search(r"User:(\S+)", line).group(1) for line in lines
               if "--operation Write --topic 'payments'" in line}
    assert writers == {"netting"}
    writers = {re.search(r"User:(\S+)", line).group(1) for line in lines
               if "--operation Write --topic 'settlements'" in line}
    assert writers == {"cashout"}
    writers = {re.search(r"User:(\S+)", line).group(1) for line in lines
               if "--operation Write --topic 'accepted'" in line}
    assert writers == {"circulation"}


def test_the_dashboard_names_every_rejection_reason():
    from schemas.rejections import Reason
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "commission.json").read_text())
    [panel] = [p for p in dashboard["panels"] if p["title"] == "Rejections per second, by reason"]
    missing = [r.value for r in Reason if r.value not in panel["description"]]
    assert not missing, f"reasons not on the rejections panel: {missing}"
    gaming = [p for p in dashboard["panels"] if "game the rules" in p["title"]]
    assert gaming, "no panel for refused attempts to game the rules"
    expr = gaming[0]["targets"][0]["expr"]
    for reason in ("not_authorized", "offer_not_owned", "funding_mismatch"):
        assert reason in expr


def test_deploy_does_not_import_the_services():
    """deploy/ describes how to run the services; it must not need their code."""
    offenders = [str(path.relative_to(ROOT)) for path in DEPLOY.rglob("*.py")
                 if re.search(r"^\s*(from|import) services\b", path.read_text(), re.M)]
    assert not offenders, offenders
