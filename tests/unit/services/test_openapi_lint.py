"""The OpenAPI document passes Redocly's recommended lint (@redocly/cli from npm,
installed into deploy/tools by `make install`): no errors and no warnings."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from services.api.openapi import document

ROOT = Path(__file__).resolve().parents[3]
REDOCLY = ROOT / "deploy" / "tools" / "node_modules" / ".bin" / "redocly"


def test_redocly_recommended_lint_passes_without_warnings(tmp_path):
    assert shutil.which("node"), "node is not installed (deploy/install-system.sh installs npm)"
    assert REDOCLY.exists(), "run `make install` (npm ci --prefix deploy/tools)"
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(document()))
    out = subprocess.run([str(REDOCLY), "lint", str(spec), "--format=stylish"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Your API description is valid" in text and " warning " not in text, text


def test_every_operation_has_an_id_and_says_who_may_call_it():
    # writes and an account's own data (earnings, feed, its commands' outcomes) need a
    # login; the catalogue, pages and share links are public (an explicit empty list,
    # not a missing one)
    # (sign-up is a public POST, like the login)
    private = {"/accounts/{id}/earnings", "/accounts/{id}/feed", "/commands/{id}",
               "/accounts/me", "/accounts/me/export"}
    for path, methods in document()["paths"].items():
        for method, op in methods.items():
            assert op["operationId"], (path, method)
            needs_login = (method == "post" and path not in ("/login", "/accounts")
                           ) or path in private
            assert op["security"] == ([{"bearer": []}] if needs_login else []), path
