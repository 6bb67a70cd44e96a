"""`make audit-deps`: pip-audit over the lock file, against PyPI's advisories.

- The advisory source cannot be reached (no network, a proxy refusing): it says so
  plainly and exits 0. A machine without network must not fail CI, and must not pass
  it silently either.
- A vulnerability in a locked package fails (exit 1), unless deploy/scan/pip-audit-allow.txt
  lists its id with the reason it is accepted.

Run with the scanners' virtualenv (.venv-scan), where pip-audit is installed:
    .venv-scan/bin/python deploy/scan/audit_deps.py requirements.lock
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ADVISORIES = "https://pypi.org/pypi/pip/json"  # pip-audit's default source: PyPI's JSON API
ALLOWLIST = Path(__file__).resolve().parent / "pip-audit-allow.txt"


def reachable(url: str = ADVISORIES, timeout_s: float = 10.0) -> str | None:
    """None when the advisory source answers, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # fixed https URL
            answer.read(1)
        return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def allowed(text: str) -> dict[str, str]:
    """``id -> reason`` from the allowlist: one advisory a line, ``ID reason...``;
    ``#`` starts a comment. An id without a reason is an error."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        vuln_id, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{ALLOWLIST.name}: {vuln_id} has no reason")
        out[vuln_id] = reason.strip()
    return out


def findings(report: dict) -> list[tuple[str, str, str, list[str]]]:
    """``(package, version, advisory id, its aliases)`` of every vulnerability found."""
    return [(dep["name"], dep["version"], vuln["id"], vuln.get("aliases", []))
            for dep in report.get("dependencies", []) for vuln in dep.get("vulns", [])]


def verdict(found: list[tuple[str, str, str, list[str]]], allow: dict[str, str]) -> list[str]:
    """The findings the allowlist does not accept (by id or by any alias)."""
    return [f"{name} {version}: {vuln_id} ({', '.join(aliases) or 'no aliases'})"
            for name, version, vuln_id, aliases in found
            if vuln_id not in allow and not any(a in allow for a in aliases)]


def main(argv: list[str]) -> int:
    lock = argv[1] if len(argv) > 1 else "requirements.lock"
    why = reachable()
    if why is not None:
        print(f"DEPENDENCY AUDIT NOT RUN: the advisory source ({ADVISORIES}) cannot be "
              f"reached from this machine ({why}). {lock} was not checked for known "
              f"vulnerabilities.")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        run = subprocess.run(
            [sys.executable, "-m", "pip_audit", "--requirement", lock, "--disable-pip",
             "--format", "json", "--output", str(out), "--progress-spinner", "off"],
            capture_output=True, text=True)
        if not out.exists():
            if "ConnectionError" in run.stderr or "Max retries" in run.stderr:
                print(f"DEPENDENCY AUDIT NOT RUN: the advisory source stopped answering "
                      f"during the audit:\n{run.stderr.strip()[-2000:]}")
                return 0
            print(run.stderr, file=sys.stderr)
            return run.returncode or 1
        report = json.loads(out.read_text())
    allow = allowed(ALLOWLIST.read_text())
    found = findings(report)
    checked = len(report.get("dependencies", []))
    bad = verdict(found, allow)
    for name, version, vuln_id, _ in found:
        if not any(line.startswith(f"{name} {version}: {vuln_id} ") for line in bad):
            print(f"accepted: {name} {version} {vuln_id}: {allow.get(vuln_id, 'by alias')}")
    if bad:
        print(f"dependency audit FAILED: {len(bad)} known vulnerabilities in {lock} not in "
              f"{ALLOWLIST.name}:\n  " + "\n  ".join(bad))
        return 1
    accepted = f" ({len(found)} accepted in {ALLOWLIST.name})" if found else ""
    print(f"dependency audit: {checked} locked packages of {lock} checked against PyPI's "
          f"advisories: no known vulnerability{accepted}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
