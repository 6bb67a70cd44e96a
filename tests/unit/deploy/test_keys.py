"""Each deployed process holds only its own keys (deploy/keys.py, KEYS_USED): the
Kubernetes Deployments, the compose services and the example key files are read
against that table, and a stage started with keys it does not use refuses in
production."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from deploy.keys import (
    EXAMPLES,
    KEYS_FILE,
    KEYS_USED,
    PUBLIC_ONLY,
    SCOPES,
    compose_secret,
    example_file,
    holders,
    scopes_in,
    secret_name,
)

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
KEYS_DIR = str(Path(KEYS_FILE).parent)


def manifests(folder: Path) -> list[dict]:
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def deployments(folder: Path = DEPLOY / "k8s" / "base") -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in manifests(folder) if d.get("kind") == "Deployment"}


def key_violations(name: str, deployment: dict) -> list[str]:
    """What in ``deployment`` breaks "only its own keys": a key Secret other than its
    own, its own when it uses no keys, a keys file or inline keys it should not have,
    any other process's secret (Kafka or Redis login)."""
    pod = deployment["spec"]["template"]["spec"]
    out = []
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", [])
               if "secret" in v}
    projected = [s["secret"]["name"] for v in pod.get("volumes", []) if "projected" in v
                 for s in v["projected"].get("sources", []) if "secret" in s]
    key_secrets = {s for s in [*secrets.values(), *projected] if s.startswith("commission-keys")}
    wanted = {secret_name(name)} if KEYS_USED[name] else set()
    if key_secrets != wanted:
        out.append(f"{name} mounts key secrets {sorted(key_secrets)}, uses {sorted(wanted)}")
    for secret in [*secrets.values(), *projected]:
        if not secret.endswith(f"-{name}"):
            out.append(f"{name} mounts {secret}, another process's secret")
    for container in pod["containers"] + pod.get("initContainers", []):
        env = {e["name"]: e for e in container.get("env", [])}
        if "COMMISSION_KEYS" in env:
            out.append(f"{name}: keys in an environment variable")
        for e in container.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                out.append(f"{name}: secret {ref['name']} in environment variable {e['name']}")
        has_file = "COMMISSION_KEYS_FILE" in env
        if has_file != bool(KEYS_USED[name]):
            out.append(f"{name}: COMMISSION_KEYS_FILE {'set' if has_file else 'missing'}")
        if has_file:
            assert env["COMMISSION_KEYS_FILE"]["value"] == KEYS_FILE
            mount = [m for m in container.get("volumeMounts", []) if m["mountPath"] == KEYS_DIR]
            if [secrets.get(m["name"]) for m in mount] != [secret_name(name)]:
                out.append(f"{name}: {KEYS_DIR} is not its own key secret")
    return out


def test_every_deployment_mounts_only_the_keys_it_uses():
    found = deployments()
    assert set(found) == set(KEYS_USED), "deploy/keys.py and the Deployments name the same processes"
    problems = [p for name, d in found.items() for p in key_violations(name, d)]
    assert not problems, problems


def test_the_overlays_add_no_key_secrets():
    """The overlays patch settings, replicas and Redis logins; a key Secret in an
    overlay would escape the check above."""
    for overlay in (DEPLOY / "k8s" / "overlays").iterdir():
        for path in overlay.glob("*.yaml"):
            assert "commission-keys" not in path.read_text(), path
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
            inline = [yaml.safe_load(p["patch"]) for d in docs for p in d.get("patches", [])
                      if "patch" in p]  # strategic merge patches (JSON patches are lists)
            for doc in docs + inline:
                if isinstance(doc, dict) and doc.get("kind") == "Deployment":
                    for volume in doc["spec"]["template"]["spec"].get("volumes", []):
                        name = volume.get("secret", {}).get("secretName", "")
                        assert name.endswith(f"-{doc['metadata']['name']}"), (path, name)


@pytest.mark.parametrize("mutation", ["add", "swap", "file", "env"])
def test_the_check_fails_on_a_key_a_deployment_does_not_use(mutation):
    """The check above is not vacuous: each way of giving a process a key it does not
    use is reported."""
    found = deployments()
    name = {"add": "api", "swap": "api", "file": "allocation", "env": "cashout"}[mutation]
    d = copy.deepcopy(found[name])
    pod = d["spec"]["template"]["spec"]
    [container] = pod["containers"]
    if mutation == "add":  # the API given the sequencer's keys too
        pod["volumes"].append({"name": "more", "secret": {"secretName": secret_name("circulation")}})
    elif mutation == "swap":  # the API given the sequencer's keys instead of its own
        next(v for v in pod["volumes"] if v["name"] == "keys")["secret"]["secretName"] = \
            secret_name("circulation")
    elif mutation == "file":  # a keyless stage given a keys file
        container["env"].append({"name": "COMMISSION_KEYS_FILE", "value": KEYS_FILE})
    else:  # a secret in an environment variable
        container["env"].append({"name": "COMMISSION_KEYS", "valueFrom": {
            "secretKeyRef": {"name": secret_name("circulation"), "key": "keys"}}})
    assert key_violations(name, d)


def compose_services() -> dict[str, dict]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return {name: s for name, s in compose["services"].items()
            if s.get("command", [None, None, ""])[2].startswith("services.")}


def test_every_compose_service_gets_only_its_own_keys_file():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose_services()
    # the simulated payment system is the outside party, not a process of the engine:
    # it holds no engine key (it signs with the development private key, its default)
    paysim = services.pop("paysim")
    assert not paysim.get("secrets") and not {"COMMISSION_KEYS", "COMMISSION_KEYS_FILE",
                                              "PAYMENT_SYSTEM_KEYS"} & set(paysim["environment"])
    assert set(services) == set(KEYS_USED)
    for name, service in services.items():
        env = service.get("environment", {})
        assert "COMMISSION_KEYS" not in env, name
        sources = [s["source"] if isinstance(s, dict) else s for s in service.get("secrets", [])]
        if KEYS_USED[name]:
            assert sources == [compose_secret(name)], (name, sources)
            [secret] = service["secrets"]
            assert env["COMMISSION_KEYS_FILE"] == f"/run/secrets/{secret['target']}"
            path = (DEPLOY / compose["secrets"][compose_secret(name)]["file"]).resolve()
            assert path == example_file(name), (name, path)
        else:
            assert not sources and "COMMISSION_KEYS_FILE" not in env, name
    # every secret file is used by exactly one service
    used = [s["source"] for svc in services.values() for s in svc.get("secrets", [])]
    assert sorted(used) == sorted(compose["secrets"]), "each keys file serves one service"


def test_example_key_files_hold_exactly_the_scopes_each_process_uses():
    from services.common.auth import Keyring

    assert sorted(EXAMPLES.iterdir()) == sorted(example_file(n) for n in holders())
    for name in holders():
        text = example_file(name).read_text()
        assert Keyring.parse(text).scopes() == KEYS_USED[name], name  # as a service loads it
        keys = scopes_in(text)
        assert {scope for _, scope, _ in keys} == KEYS_USED[name], name
        for key_id, scope, kind in keys:
            assert scope in SCOPES
            if scope in PUBLIC_ONLY:
                assert kind == "ed25519-public", f"{name}: {key_id} must be a public key"
            else:
                assert kind == "hmac", (name, key_id)
    # an HMAC key is the same secret at both ends: the sequencer's copies match
    def lines(name):
        return {line for line in example_file(name).read_text().splitlines()
                if line and not line.startswith("#")}
    assert lines("api") - lines("circulation") == {
        line for line in lines("api") if ":session:" in line}
    assert lines("withdrawal") <= lines("circulation")
    assert lines("captures") <= lines("circulation")


def test_the_engine_never_holds_a_payment_systems_private_key():
    for name in KEYS_USED:
        assert not (KEYS_USED[name] - set(SCOPES)), name
    for path in DEPLOY.rglob("*"):
        if path.is_file() and "node_modules" not in path.parts and path.suffix != ".py":
            assert "ed25519-private" not in path.read_text(errors="replace"), path


def test_the_runbook_cites_the_table():
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    assert "deploy/keys.py" in runbook
    for name in holders():
        assert secret_name(name) in runbook, name


# -- at start: a stage holds only its scopes ---------------------------------------------

ALL_KEYS = ("g1:gateway:gateway-secret-0123456789,s1:system:system-secret-0123456789,"
            "d1:draw:draw-secret-0123456789,x1:session:session-secret-0123456789")


def test_a_stage_holds_only_its_scopes(monkeypatch):
    from services.common.stagekeys import stage_keys

    monkeypatch.delenv("COMMISSION_KEYS_FILE", raising=False)
    monkeypatch.setenv("COMMISSION_KEYS", ALL_KEYS)
    monkeypatch.delenv("COMMISSION_ENV", raising=False)
    assert stage_keys("withdrawal").scopes() == {"system"}
    assert stage_keys("allocation").keys == {}
    monkeypatch.setenv("COMMISSION_ENV", "production")
    with pytest.raises(SystemExit, match="it does not use"):
        stage_keys("withdrawal")
    with pytest.raises(SystemExit, match="uses no keys"):
        stage_keys("cashout")
    monkeypatch.setenv("COMMISSION_KEYS", "s1:system:system-secret-0123456789")
    assert stage_keys("withdrawal").scopes() == {"system"}
    monkeypatch.delenv("COMMISSION_KEYS")
    assert stage_keys("netting").keys == {}  # production: a keyless stage reads no keys
    with pytest.raises(KeyError):
        stage_keys("a-stage-missing-from-the-table")
