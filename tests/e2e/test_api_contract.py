"""The OpenAPI document holds for the running server: schemathesis generates requests
from it (logged in, so writes are exercised too) and checks every response's status
code and body against the document, and that nothing answers with a server error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from deploy.localstack import free_port
from tests.e2e.http import login, wait_for


def test_openapi_document_holds_for_the_running_server(pipeline, tmp_path):
    # the virtualenv's own command (make test runs .venv/bin/python, whose bin/ is not
    # on PATH); make install installs it with the dev extra: missing is a failure
    beside = Path(sys.executable).parent / "schemathesis"
    cli = str(beside) if beside.exists() else shutil.which("schemathesis")
    assert cli is not None, "schemathesis is not installed: run make install (dev extra)"
    port = free_port()
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(free_port()), API_WRITES_PER_S="1000")
    wait_for(port, "/openapi.json", lambda b: b["openapi"] == "3.1.0", pipeline=pipeline)
    token = login(port, "alice")
    out = subprocess.run(
        [cli, "run", f"http://127.0.0.1:{port}/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance,"
                     "response_schema_conformance,content_type_conformance",
         "-H", f"Authorization: Bearer {token}", "--max-examples", "25", "--seed", "1",
         # logging out would end the session the whole run uses (test_api_trust has it)
         "--exclude-path", "/logout",
         "--request-timeout", "10"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout.lower(), out.stdout[-2000:]
    pipeline.assert_running()
