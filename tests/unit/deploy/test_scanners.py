"""Tools no one here wrote: checkov over deploy/ (the Kubernetes manifests, the
kustomize overlays as rendered, the Dockerfile, secrets in any file) and bandit over
services/ and domain/. Every finding is fixed or listed with its reason in
deploy/scan/checkov-allow.yaml or deploy/scan/bandit-allow.yaml; an unlisted finding
fails, and so does a listed one that no longer occurs.

The scanners live in their own virtualenv, .venv-scan (`make scan-install`, which
`make test` runs first). checkov has no compose checks: test_hardening.py and
test_keys.py read deploy/compose.yaml."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
SCAN_BIN = ROOT / ".venv-scan" / "bin"
CHECKOV_FRAMEWORKS = ("kubernetes", "kustomize", "dockerfile", "secrets")


def scanner(name: str) -> Path:
    path = SCAN_BIN / name
    if not path.exists():
        pytest.skip(f"{path} is missing: `make scan-install` (make test runs it first)")
    return path


def allowlist(name: str) -> list[dict]:
    entries = yaml.safe_load((ROOT / "deploy" / "scan" / name).read_text()) or []
    for entry in entries:
        assert entry.get("reason", "").strip(), f"{name}: an entry without a reason: {entry}"
    return entries


def run_checkov() -> list[dict]:
    """checkov's reports, one per framework that found resources."""
    env = {**os.environ, "PATH": f"{SCAN_BIN}:{os.environ.get('PATH', '')}",
           # no calls home: no Prisma Cloud, no version check
           "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "BC_SKIP_MAPPING": "TRUE"}
    out = subprocess.run(
        [str(scanner("checkov")), "--directory", "deploy", "--framework", *CHECKOV_FRAMEWORKS,
         "--skip-path", "deploy/tools", "--output", "json", "--quiet", "--compact",
         "--skip-download"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert out.stdout.strip(), f"checkov printed nothing (exit {out.returncode}): {out.stderr}"
    reports = json.loads(out.stdout)
    return reports if isinstance(reports, list) else [reports]


def test_checkov_finds_nothing_unlisted():
    reports = {r["check_type"]: r for r in run_checkov()}
    # every framework that should see something did: an overlay that fails to render
    # or a missing kustomize would otherwise pass silently
    for framework in ("kubernetes", "kustomize", "dockerfile"):
        assert reports.get(framework, {}).get("summary", {}).get("resource_count"), \
            f"checkov scanned no {framework} resource"
        assert not reports[framework]["summary"]["parsing_errors"], reports[framework]["summary"]
    # kustomize rendered the base and every overlay (which add no resources of their own)
    overlays = [d for d in (ROOT / "deploy" / "k8s" / "overlays").iterdir() if d.is_dir()]
    assert reports["kustomize"]["summary"]["resource_count"] == \
        (1 + len(overlays)) * reports["kubernetes"]["summary"]["resource_count"], \
        (reports["kustomize"]["summary"], reports["kubernetes"]["summary"])

    allowed = allowlist("checkov-allow.yaml")
    used = [0] * len(allowed)
    unlisted = []
    for report in reports.values():
        for finding in report["results"]["failed_checks"]:
            for i, entry in enumerate(allowed):
                if entry["check"] == finding["check_id"] and (
                        "resources" not in entry or
                        any(re.search(p, finding["resource"]) for p in entry["resources"])) and (
                        "files" not in entry or
                        any(re.search(p, finding["file_path"]) for p in entry["files"])):
                    used[i] += 1
                    break
            else:
                unlisted.append(f"{report['check_type']} {finding['check_id']} "
                                f"{finding['check_name']!r} {finding['resource']} "
                                f"({finding['file_path']})")
    assert not unlisted, "checkov findings neither fixed nor in deploy/scan/checkov-allow.yaml:\n" \
        + "\n".join(unlisted)
    stale = [entry["check"] for entry, n in zip(allowed, used, strict=True) if not n]
    assert not stale, f"allowlisted but no longer found (remove them): {stale}"


def test_bandit_finds_nothing_unlisted():
    out = subprocess.run([str(scanner("bandit")), "-r", "services", "domain", "-f", "json", "-q"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert not report["errors"], report["errors"]
    assert report["metrics"]["_totals"]["loc"] > 1000, "bandit read almost nothing"
    allowed = allowlist("bandit-allow.yaml")
    used = [0] * len(allowed)
    unlisted = []
    for finding in report["results"]:
        path = os.path.relpath(finding["filename"], ROOT) if os.path.isabs(finding["filename"]) \
            else finding["filename"]
        for i, entry in enumerate(allowed):
            if entry["test"] == finding["test_id"] and any(
                    fnmatch.fnmatch(path, p) for p in entry["paths"]):
                used[i] += 1
                break
        else:
            unlisted.append(f"{finding['test_id']} {path}:{finding['line_number']} "
                            f"{finding['issue_text']}")
    assert not unlisted, "bandit findings neither fixed nor in deploy/scan/bandit-allow.yaml:\n" \
        + "\n".join(unlisted)
    stale = [entry["test"] for entry, n in zip(allowed, used, strict=True) if not n]
    assert not stale, f"allowlisted but no longer found (remove them): {stale}"
