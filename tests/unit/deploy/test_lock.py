"""Dependencies pinned with hashes: requirements.lock (everything, for `make install`)
and requirements-runtime.lock (the image) agree with pyproject.toml and with each
other, every entry carries its hashes, and the install paths use them. Plus the
dependency audit's verdicts (deploy/scan/audit_deps.py)."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
LOCKS = ("requirements.lock", "requirements-runtime.lock", "deploy/scan/requirements.lock")


def entries(lock: str) -> list[tuple[str, str, str, list[str]]]:
    """``(name, version, marker, hashes)`` of every pinned entry of a uv/pip-compile lock."""
    out = []
    text = (ROOT / lock).read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.split("\n", 1)[0]
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]+))?", first)
        if not m:
            assert first.startswith("#") or not first.strip(), f"{lock}: not a pin: {first}"
            continue
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        out.append((canonicalize_name(m.group(1)), m.group(2), (m.group(3) or "").strip(), hashes))
    return out


def versions_here(lock: str) -> dict[str, str]:
    """name -> the version this interpreter installs from ``lock`` (markers evaluated)."""
    out = {}
    for name, version, marker, _ in entries(lock):
        if not marker or Marker(marker).evaluate():
            assert out.setdefault(name, version) == version, f"{lock}: {name} twice"
    return out


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_package_carries_its_hashes(lock):
    found = entries(lock)
    assert len(found) > 10, lock
    missing = [name for name, _, _, hashes in found if not hashes]
    assert not missing, f"{lock}: entries without --hash: {missing}"


def test_the_locks_satisfy_pyproject():
    """Fails after a dependency changed in pyproject.toml until `make lock` ran."""
    meta = project()
    runtime = [Requirement(r) for r in meta["project"]["dependencies"]]
    dev = [Requirement(r) for r in meta["project"]["optional-dependencies"]["dev"]]
    build = [Requirement(r) for r in meta["build-system"]["requires"]]
    for lock, wanted in (("requirements.lock", runtime + dev + build),
                         ("requirements-runtime.lock", runtime + build)):
        here = versions_here(lock)
        for req in wanted:
            name = canonicalize_name(req.name)
            assert name in here, f"{lock} lacks {req} (make lock)"
            assert req.specifier.contains(here[name], prereleases=True), \
                f"{lock} has {name}=={here[name]}, pyproject.toml wants {req} (make lock)"
    dev_only = {canonicalize_name(r.name) for r in dev} - {canonicalize_name(r.name) for r in runtime}
    assert not dev_only & set(versions_here("requirements-runtime.lock")), \
        "the image's lock holds test tools"


def test_the_runtime_lock_is_the_full_lock_less_the_dev_tools():
    full = {(n, v) for n, v, _, _ in entries("requirements.lock")}
    runtime = {(n, v) for n, v, _, _ in entries("requirements-runtime.lock")}
    assert runtime <= full, runtime - full


def test_install_paths_use_the_locks():
    makefile = (ROOT / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*)\n((?:\t.*\n)+)", makefile, re.M)
    prerequisites, recipe = stamp.group(1), stamp.group(2)
    assert "$(LOCK)" in prerequisites, "a new lock must reinstall"
    assert re.search(r"^LOCK\s*:=\s*requirements\.lock$", makefile, re.M)
    pip_lines = [line for line in recipe.splitlines() if "pip install" in line]
    assert pip_lines[0].endswith("--require-hashes -r $(LOCK)"), pip_lines
    assert "--no-deps" in pip_lines[1] and pip_lines[1].endswith("-e ."), pip_lines
    assert len(pip_lines) == 2, "nothing else is installed unpinned"
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --require-hashes -r requirements-runtime.lock" in dockerfile
    assert re.search(r"pip install .*--no-deps.* \.$", dockerfile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make audit-deps" in ci


# -- the dependency audit's verdicts -------------------------------------------------------

def audit_module():
    spec = importlib.util.spec_from_file_location(
        "audit_deps", ROOT / "deploy" / "scan" / "audit_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_unlisted_vulnerability_fails_a_listed_one_passes():
    audit = audit_module()
    report = {"dependencies": [
        {"name": "a", "version": "1.0", "vulns": [{"id": "PYSEC-1", "aliases": ["CVE-1"]}]},
        {"name": "b", "version": "2.0", "vulns": [{"id": "GHSA-2", "aliases": []}]},
        {"name": "c", "version": "3.0", "vulns": []}]}
    found = audit.findings(report)
    assert len(found) == 2
    assert audit.verdict(found, {}) == ["a 1.0: PYSEC-1 (CVE-1)", "b 2.0: GHSA-2 (no aliases)"]
    allow = audit.allowed("# a comment\nCVE-1 not reachable from our code  # aside\n")
    assert allow == {"CVE-1": "not reachable from our code"}
    assert audit.verdict(found, allow) == ["b 2.0: GHSA-2 (no aliases)"]
    with pytest.raises(SystemExit, match="no reason"):
        audit.allowed("GHSA-2\n")
    assert audit.allowed((ROOT / "deploy" / "scan" / "pip-audit-allow.txt").read_text()) == {}


def test_an_unreachable_advisory_source_is_said_not_failed(monkeypatch, capsys):
    audit = audit_module()
    assert "Error" in audit.reachable("http://127.0.0.1:9/", timeout_s=2)
    monkeypatch.setattr(audit, "reachable", lambda: "URLError: no route")
    assert audit.main(["audit_deps.py", "requirements.lock"]) == 0
    assert "DEPENDENCY AUDIT NOT RUN" in capsys.readouterr().out
