"""Deployment files: the compose file is valid and wires every service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"


def test_compose_file_is_valid_and_names_every_service():
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (deploy/install-system.sh installs it)")
    out = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True,
                         text=True, check=True)
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    assert {"kafka", "redis", "circulation", "allocation", "withdrawal", "cashout"} <= set(services)
    for name in ("circulation", "allocation", "withdrawal", "cashout"):
        assert services[name]["command"] == ["python", "-m", f"services.{name}"]
        assert services[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
