"""Insecure defaults the scanners do not see: compose (checkov has no compose checks),
which pods the NetworkPolicies let talk to which, Redis over TLS with a user in
production, and no secret in an environment value anywhere."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|KEYS\b|_KEY\b|CREDENTIAL", re.I)


def base_documents() -> list[dict]:
    return [d for path in sorted(BASE.glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d]


def test_compose_publishes_nothing_beyond_this_machine():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
            published[name] = port
    assert {"kafka", "redis", "api", "grafana", "prometheus"} <= set(published)
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana.get("GF_AUTH_ANONYMOUS_ENABLED") == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana


def test_compose_services_run_read_only_without_capabilities():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        if "services." not in " ".join(map(str, service.get("command", []))):
            continue  # Kafka, Redis, Prometheus, Grafana: their images' own users
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_no_secret_is_an_environment_value():
    """Secrets come from mounted files (``*_FILE``), never from a value in a manifest,
    an overlay or the compose file."""
    def check(where, env):
        for name, value in env:
            if SECRETISH.search(name) and not name.endswith("_FILE"):
                raise AssertionError(f"{where}: {name}={value!r} looks like a secret in env")
            if isinstance(value, str) and re.search(r"://[^/@\s]*:[^/@\s]+@", value):
                raise AssertionError(f"{where}: {name} carries a password in its URL")

    paths = [*BASE.glob("*.yaml"), *(DEPLOY / "k8s" / "overlays").rglob("*.yaml")]
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc.get("kind") == "ConfigMap":
                check(path.name, doc["data"].items())
            for container in doc.get("spec", {}).get("template", {}).get("spec", {}) \
                    .get("containers", []):
                check(path.name, [(e["name"], e.get("value")) for e in container.get("env", [])])
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        if name == "grafana":  # its own settings, none of them a secret
            continue
        check(f"compose {name}", dict(service.get("environment", {})).items())


def _selected(policy: dict, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _peers(rule_peers: list[dict]) -> set[str]:
    """The app names a list of NetworkPolicy peers admits ('*' for anyone)."""
    if not rule_peers:
        return {"*"}
    names = set()
    for peer in rule_peers:
        selector = peer.get("podSelector", {})
        names.update(v for k, v in selector.get("matchLabels", {}).items()
                     if k == "app.kubernetes.io/name")
        for expr in selector.get("matchExpressions", []):
            names.update(expr["values"])
        if "ipBlock" in peer:
            names.add("*")
    return names


def test_network_policies_admit_only_what_each_part_needs():
    docs = base_documents()
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    apps = [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"]
    [deny] = [p for p in policies if p["spec"]["podSelector"] == {}
              and "ingress" not in p["spec"] and "egress" not in p["spec"]]
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}

    def admitted(target: str, direction: str) -> dict[str, set[int]]:
        """peer app -> ports, for traffic into (ingress) or out of (egress) ``target``."""
        labels = {"app.kubernetes.io/name": target, "app.kubernetes.io/part-of":
                  "commission-engine" if target in apps else "other"}
        out: dict[str, set[int]] = {}
        for policy in policies:
            if not _selected(policy, labels):
                continue
            for rule in policy["spec"].get(direction, []):
                peers = _peers(rule.get("from" if direction == "ingress" else "to", []))
                for peer in peers:
                    out.setdefault(peer, set()).update(p["port"] for p in rule.get("ports", []))
        return out

    for app in apps:
        inbound = admitted(app, "ingress")
        # only the API takes traffic from anyone; the rest only Prometheus's scrapes
        if app == "api":
            assert inbound["*"] == {8080}
        else:
            assert set(inbound) == {"prometheus"}, (app, inbound)
        outbound = admitted(app, "egress")
        assert outbound.get("kafka") == {9092}, app
        assert ("redis" in outbound) == (app in ("api", "readmodel")), app
        # out of the cluster: only the API, only HTTPS (the payment system's checkout)
        assert outbound.get("*", set()) == ({443} if app == "api" else set()), (app, outbound)
    assert set(admitted("redis", "ingress")) == {"api", "readmodel"}
    assert set(admitted("kafka", "ingress")) == {*apps, "kafka"}


def test_production_logs_in_to_redis_over_tls_as_its_own_user():
    from services.common.settings import redis_url_from_env  # noqa: F401 (the reader exists)

    prod = DEPLOY / "k8s" / "overlays" / "prod"
    kustomization = yaml.safe_load((prod / "kustomization.yaml").read_text())
    patched = {}
    for patch in kustomization["patches"]:
        doc = yaml.safe_load(patch["patch"])
        [container] = doc["spec"]["template"]["spec"]["containers"]
        patched[doc["metadata"]["name"]] = {e["name"]: e["value"] for e in container["env"]}
    assert set(patched) == {"api", "readmodel"}
    for name, env in patched.items():
        assert env["REDIS_URL"].startswith(f"rediss://commission-{name}@"), env
        assert env["REDIS_PASSWORD_FILE"].startswith("/run/secrets/")
