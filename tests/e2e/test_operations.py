"""What operators get: Prometheus metrics over HTTP and JSON logs without secrets."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.localstack import free_port
from schemas import commands as c
from services.common.auth import DEV_KEYS, Key
from tests.e2e.test_seed_flows import setup


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_and_logs(pipeline):
    ports = {s: free_port() for s in ("circulation", "allocation", "withdrawal", "cashout")}
    for service, port in ports.items():
        pipeline.start(service, metrics_port=port)
    t = int(time.time() * 1000)
    cid = "ops-cert"
    pipeline.send(
        *setup(cid),
        c.Circulate(command_id="ops-s1", certificate_id=cid, at_ms=t, account_id="ann"),
        c.Purchase(command_id="ops-buy", certificate_id=cid, at_ms=t, account_id="bob",
                   payment_ref="pay-ops"),
    )
    body = json.dumps({"type": "circulate", "command_id": "ops-forged", "certificate_id": cid,
                       "at_ms": t, "account_id": "eve"}).encode()
    pipeline.sender.send_raw(cid.encode(), body, headers=pipeline.keyring.sign(
        body, Key("dev-gw-1", "gateway", b"guessed-secret-guessed-secret")))
    pipeline.sender.flush()
    pipeline.wait_for(pipeline.topics.payments, 3)
    pipeline.wait_for(pipeline.topics.rejections, 1)
    time.sleep(1.5)  # the gauges are refreshed after each poll

    circ = scrape(ports["circulation"])
    assert value(circ["commission_rejections"], "commission_rejections_total",
                 reason="bad_signature") == 1
    assert value(circ["commission_messages_in"], "commission_messages_in_total",
                 type="Circulate") == 1
    assert value(circ["commission_messages_out"], "commission_messages_out_total",
                 type="CertificatePurchased") == 1
    assert value(circ["commission_processing_seconds"], "commission_processing_seconds_count") >= 6
    assert value(circ["commission_end_to_end_seconds"],
                 "commission_end_to_end_seconds_count") >= 5
    assert "commission_consumer_lag_messages" in circ
    assert value(circ["commission_table_rows"], "commission_table_rows") == 1

    cash = scrape(ports["cashout"])
    money = cash["commission_money_minor_units"]
    assert value(money, "commission_money_minor_units_total", flow="paid_out",
                 currency="USD") == 10_000
    assert value(money, "commission_money_minor_units_total", flow="released",
                 currency="USD") == 90_000
    assert value(money, "commission_money_minor_units_total", flow="seller_paid",
                 currency="USD") == 200_000
    alloc = scrape(ports["allocation"])
    assert value(alloc["commission_money_minor_units"], "commission_money_minor_units_total",
                 flow="acquired", currency="USD") == 10_000

    for service, port in ports.items():
        for path in ("healthz", "readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as r:
                body = json.loads(r.read())
            assert r.status == 200 and body["ok"] and body["joined"], (service, path, body)
        assert body["partitions"] == [0, 1, 2, 3]
    # a frozen process answers nothing: its liveness probe fails (then recovers)
    frozen = pipeline.procs[("allocation", 0)]
    frozen.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{ports['allocation']}/healthz", timeout=2)
    finally:
        frozen.send_signal(signal.SIGCONT)

    secrets = [entry.split(":", 2)[2] for entry in DEV_KEYS.split(",")]
    for service in ports:
        text = (pipeline.logs / f"{service}-0.log").read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert lines and all(line["service"] == service for line in lines)
        assert not any(secret in text for secret in secrets)
