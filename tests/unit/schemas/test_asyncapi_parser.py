"""The AsyncAPI document parses with the official parser (@asyncapi/parser from npm,
installed into deploy/tools by `make install`) without a single error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TOOLS = ROOT / "deploy" / "tools"


def test_the_official_asyncapi_parser_accepts_the_document():
    node = shutil.which("node")
    assert node, "node is not installed (deploy/install-system.sh installs npm)"
    assert (TOOLS / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        "run `make install` (npm ci --prefix deploy/tools)")
    out = subprocess.run([node, str(TOOLS / "parse-asyncapi.mjs"),
                          str(ROOT / "schemas" / "asyncapi.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "errors: 0" in out.stdout
