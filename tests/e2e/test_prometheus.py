"""The operators' view, proven against a real Prometheus (Debian's package, started by
the project as `make run` starts it): with the pipeline under load, every query of the
Grafana dashboard and every series an alert expression reads returns data from the
live processes (no panel would show "No data", no alert is blind), and killing a
service makes CommissionServiceDown fire for it.

The rules are the project's own (deploy/prometheus/alerts.yml) with every ``for:``
cut to 2 s, so the test waits seconds instead of minutes; the durations themselves are
checked by promtool's unit tests (deploy/prometheus/alerts_test.yml)."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from deploy.localstack import ALERT_RULES, Prometheus, free_port
from tests.e2e.http import get
from tests.e2e.pipeline import ROOT, SERVICES
from tests.e2e.promql import series_reading
from tests.e2e.traffic import build

DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"


def dashboard_queries() -> list[tuple[str, str]]:
    return [(panel.get("title", "?"), target["expr"])
            for board in sorted(DASHBOARDS.glob("*.json"))
            for panel in json.loads(board.read_text())["panels"]
            for target in panel.get("targets", []) if target.get("expr")]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]
            for rule in group["rules"]]


def query(prometheus: Prometheus, expr: str) -> list[dict]:
    url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def wait_until_all_return_data(prometheus: Prometheus, exprs: dict[str, str], pipeline,
                               timeout_s: float) -> dict[str, str]:
    """Polls every expression until each returns data; what never does is returned."""
    missing = dict(exprs)
    deadline = time.monotonic() + timeout_s
    while missing and time.monotonic() < deadline:
        pipeline.assert_running()
        missing = {name: e for name, e in missing.items() if not query(prometheus, e)}
        time.sleep(1)
    return missing


def firing(prometheus: Prometheus, alertname: str) -> list[dict]:
    return [a["metric"] for a in query(prometheus, f'ALERTS{{alertname="{alertname}"}}')
            if a["metric"]["alertstate"] == "firing"]


@pytest.mark.timeout(420)
def test_every_panel_and_alert_reads_live_data_and_a_killed_service_fires_its_alert(
        pipeline, tmp_path):
    ports = {name: free_port() for name in (*SERVICES, "fraud", "readmodel", "api", "audit")}
    for service in (*SERVICES, "fraud"):
        pipeline.start(service, metrics_port=ports[service])
    pipeline.start("readmodel", metrics_port=ports["readmodel"])
    # the API's metrics are on its ops port, its pages and JSON on the public one
    api_public = free_port()
    pipeline.start("api", API_PORT=str(api_public), API_OPS_PORT=str(ports["api"]))
    with open(pipeline.logs / "audit.log", "ab") as log:
        audit = subprocess.Popen(
            [sys.executable, "-m", "services.audit", "--every", "3", "--timeout", "20",
             "--port", str(ports["audit"])], cwd=ROOT, env=pipeline.env, stdout=log,
            stderr=subprocess.STDOUT)
    rules = yaml.safe_load(ALERT_RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "2s"
    fast_rules = tmp_path / "alerts.yml"
    fast_rules.write_text(yaml.safe_dump(rules))
    prometheus = Prometheus(tmp_path / "prometheus", free_port())
    prometheus.start({"commission": {n: p for n, p in ports.items() if n != "audit"},
                      "commission-audit": {"audit": ports["audit"]}},
                     rules=fast_rules, interval_s=1)
    try:
        commands = build(60, 4_000, seed=23, t0_ms=int(time.time() * 1000))
        done = pipeline.feed_in_background(commands, every=200, pause_s=0.5)
        # readers of the API: pages, a certificate, and a request for one that is not
        rng = random.Random(3)
        certificates = sorted({c.certificate_id for c in commands})
        exprs = {f"panel {title!r}: {expr}": expr for title, expr in dashboard_queries()}
        exprs |= {f"alert {rule['alert']}: {part}": part for rule in alert_rules()
                  for part in series_reading(rule["expr"])}
        assert len(exprs) > 30
        deadline = time.monotonic() + 120
        missing = exprs
        while missing and time.monotonic() < deadline:
            for path in ("/catalogue", f"/certificates/{rng.choice(certificates)}",
                         "/certificates/no-such-certificate"):
                with contextlib.suppress(OSError):  # the API may not listen yet
                    get(api_public, path)
            missing = wait_until_all_return_data(prometheus, missing, pipeline, timeout_s=5)
        assert not missing, "no data for:\n" + "\n".join(missing)
        # and an empty answer is what a series no process exports gets (so the check can fail)
        assert query(prometheus, "sum(rate(commission_no_such_series_total[1m]))") == []
        assert done.wait(120)

        # every target is up and no service is reported down, until one is killed
        up = {r["metric"]["instance"]: r["value"][1] for r in query(prometheus, "up")}
        assert up == {name: "1" for name in ports}, up
        # the pages the README and make run link to (Debian's Prometheus: /classic/)
        for page, shows in (("/classic/alerts", "CommissionServiceDown"),
                            ("/classic/targets", "commission-audit")):
            with urllib.request.urlopen(f"{prometheus.url}{page}", timeout=5) as r:
                assert r.status == 200 and shows in r.read().decode(), page
        assert firing(prometheus, "CommissionServiceDown") == []
        pipeline.signal("allocation", sig=signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not firing(prometheus, "CommissionServiceDown") and time.monotonic() < deadline:
            time.sleep(1)
        [alert] = firing(prometheus, "CommissionServiceDown")
        assert (alert["instance"], alert["severity"]) == ("allocation", "page"), alert
        # the audit reconciles what the pipeline moved, and says so to Prometheus
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and [
                r["value"][1] for r in query(prometheus, "commission_audit_success")] != ["1"]:
            time.sleep(1)
        assert [r["value"][1] for r in query(prometheus, "commission_audit_success")] == ["1"]
    finally:
        prometheus.stop()
        audit.send_signal(signal.SIGTERM)
        audit.wait(timeout=30)
