"""The domain core and the contracts import no I/O library, not even indirectly."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN = ("faust", "aiokafka", "kafka", "redis", "prometheus_client", "mode")


def imported_modules(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["domain", "schemas"])
def test_no_io_library_is_imported_in_the_source(package):
    assert imported_modules(package).isdisjoint(FORBIDDEN)


def test_importing_the_core_loads_no_io_library():
    # A fresh interpreter: the test process itself may have loaded kafka for other tests.
    probe = (
        "import sys, domain, schemas.commands, schemas.events, schemas.payments;"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r});"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
