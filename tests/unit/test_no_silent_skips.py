"""With COMMISSION_FORBID_SKIPS=1 (.ci/run) a skipped test fails the run unless
tests/allowed_skips.txt names it (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, forbid: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\ndef test_skipped():\n    pytest.skip('nothing to run on')\n")
    env = {**os.environ, "COMMISSION_FORBID_SKIPS": "1" if forbid else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest",
                           "-p", "no:cacheprovider", str(tmp_path / "test_skips.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_not_on_the_allow_list_fails_the_run(tmp_path):
    refused = run(tmp_path, forbid=True)
    assert refused.returncode == 1, refused.stdout
    assert "SKIPPED BUT NOT ALLOWED" in refused.stdout and "test_skipped" in refused.stdout
    assert run(tmp_path, forbid=False).returncode == 0  # outside CI a skip is a skip


def test_every_allowed_skip_names_a_test_file_and_a_reason():
    for line in (ROOT / "tests" / "allowed_skips.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            prefix, _, why = line.partition("\t")
            assert (ROOT / prefix.partition("::")[0]).is_file(), prefix
            assert len(why) > 20, f"{prefix}: say why"
