"""What operators get: Prometheus metrics over HTTP and JSON logs without secrets."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest

from deploy.localstack import free_port
from schemas import commands as c
from services.common.auth import DEV_KEYS, Key
from services.common.metrics import scrape, total
from tests.e2e.certificates import cert_id
from tests.e2e.pipeline import SERVICES
from tests.e2e.test_seed_flows import paid, setup


def test_metrics_and_logs(pipeline):
    ports = {s: free_port() for s in SERVICES}
    for service, port in ports.items():
        pipeline.start(service, metrics_port=port)
    t = int(time.time() * 1000)
    cid = cert_id("ops")
    pipeline.send(
        *setup(cid),
        c.Circulate(command_id="ops-s1", certificate_id=cid, at_ms=t, account_id="ann"),
        c.Purchase(command_id="ops-buy", certificate_id=cid, at_ms=t, account_id="bob",
                   **paid(cid)),
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
    assert total(circ, "commission_rejections_total",
                 reason="bad_signature") == 1
    assert total(circ, "commission_messages_in_total",
                 type="Circulate") == 1
    assert total(circ, "commission_messages_out_total",
                 type="CertificatePurchased") == 1
    # observed once per round (the mean per message of the round), not per message:
    # at least one round, and the sum is a time
    assert total(circ, "commission_processing_seconds_count") >= 1
    assert 0 < total(circ, "commission_processing_seconds_sum") < 1
    assert total(circ, "commission_end_to_end_seconds_count") >= 5
    assert any(x.name == "commission_consumer_lag_messages" for x in circ)
    # all applied: no lag anywhere (the commit markers of transactional inputs count
    # for nothing; the demo's drain and the lag alert rely on it)
    lags = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        lags = {s: total(scrape(port), "commission_consumer_lag_messages")
                for s, port in ports.items()}
        if not any(lags.values()):
            break
        time.sleep(0.5)
    assert lags == dict.fromkeys(ports, 0), lags
    assert total(circ, "commission_table_rows") == 1

    cash = scrape(ports["cashout"])
    assert total(cash, "commission_money_minor_units_total", flow="paid_out",
                 currency="USD") == 10_000
    assert total(cash, "commission_money_minor_units_total", flow="released",
                 currency="USD") == 90_000
    assert total(cash, "commission_money_minor_units_total", flow="seller_paid",
                 currency="USD") == 200_000
    alloc = scrape(ports["allocation"])
    assert total(alloc, "commission_money_minor_units_total",
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
