"""No service runs under ``python -O``: it strips the asserts that guard money (the
reason bandit's B101 findings are allowlisted in deploy/bandit-baseline.yaml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# the demo launches the whole stack: its refusal is tested by importing it, below
ENTRY_POINTS = sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py")
                      if p.parent.name != "demo")


def test_every_service_has_an_entry_point_here():
    assert {"api", "audit", "readmodel", "circulation", "captures", "allocation",
            "withdrawal", "cashout", "netting"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("service", ENTRY_POINTS)
def test_a_service_refuses_to_run_optimised(service):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONOPTIMIZE"}
    for flags in (["-O"], ["-OO"]):
        out = subprocess.run([sys.executable, *flags, "-m", f"services.{service}"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, (service, flags, out.stdout, out.stderr)
        assert "refuse to run with python -O" in out.stderr, out.stderr


def test_the_package_itself_refuses_optimised_imports():
    """Any code of services/ (the demo, the watch tool, a stage added later) meets the
    check first: it is in the package every module of it belongs to."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONOPTIMIZE"}
    code = "import services.demo.feeder"
    out = subprocess.run([sys.executable, "-O", "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "refuse to run with python -O" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-c", code + "; print('ok')"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
