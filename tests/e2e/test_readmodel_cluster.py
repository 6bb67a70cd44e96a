"""The read model and the API on a Redis Cluster (issue #25 point 4): three masters
from Debian's redis-server (deploy/localstack.py RedisCluster), REDIS_URL
redis+cluster://. Traffic projected into the cluster and read through the API: the
catalogue, certificate pages, a login (sessions and throttling keys), an account's
feed and earnings equal what follows from the domain core; the read model's keys
spread over every master (no script or multi-key command spans slots: the cluster
refuses those, and the read model stops on a refused batch)."""

from __future__ import annotations

import time

import pytest
import redis

from deploy.localstack import RedisCluster, free_port
from services.common.metrics import scrape, total
from services.readmodel.projection import Keys
from tests.e2e.http import get, login, wait_for
from tests.e2e.test_readmodel import expected_earnings
from tests.e2e.traffic import build, settled


def low_port() -> int:
    """A free port at or below 55,535 (Redis 7.0 refuses higher ones for a cluster
    node, even with its bus on a port of its own, in some builds)."""
    while (port := free_port()) > 55_535:
        pass
    return port


@pytest.fixture
def cluster(tmp_path):
    c = RedisCluster(run_dir=tmp_path / "redis-cluster",
                     ports=(low_port(), low_port(), low_port()),
                     bus_ports=(free_port(), free_port(), free_port()))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_read_model_and_api_on_a_redis_cluster(pipeline, cluster):
    commands = build(12, 400, seed=71, t0_ms=int(time.time() * 1000))
    pipeline.start_all()
    probe, port = free_port(), free_port()
    pipeline.start("readmodel", metrics_port=probe, REDIS_URL=cluster.url)
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(free_port()),
                   REDIS_URL=cluster.url)
    pipeline.send(*commands)
    expected = settled(pipeline)
    states = expected.states
    accepted = sum(s.seq for s in states.values())
    deadline = time.monotonic() + 90
    while (n := total(scrape(probe), "commission_readmodel_commands_total",
                      outcome="projected")) < accepted:
        pipeline.assert_running()
        assert time.monotonic() < deadline, f"{n} of {accepted} projected"
        time.sleep(0.5)

    on_sale = sorted(cid for cid, s in states.items() if s.status == "posted")
    catalogue = wait_for(port, "/catalogue?sort=commission&size=100",
                         lambda b: sorted(i["id"] for i in b["items"]) == on_sale,
                         pipeline=pipeline)
    assert catalogue["total"] == len(on_sale) and "catching_up" not in catalogue
    for cid, state in states.items():
        status, page = get(port, f"/certificates/{cid}")
        assert status == 200 and (page["status"], page["chain_length"]) == (
            state.status, len(state.chain)), cid
    earnings = expected_earnings(states)
    account = max(earnings, key=lambda a: len(earnings[a]))  # the most varied sums
    token = login(port, account)  # a session, and the login throttling's keys
    _, got = get(port, f"/accounts/{account}/earnings", token=token)
    sums = earnings[account]
    for currency, figures in got["earnings"].items():
        assert figures["held_minor"] == sums.get(f"{currency}:held", 0)
        assert figures["voided_minor"] == sums.get(f"{currency}:voided", 0)
        assert figures["payable_minor"] + figures["paid_minor"] + figures["failed_minor"] == sum(
            sums.get(f"{currency}:{k}", 0) for k in ("payable", "paid", "failed"))
        assert figures["pending_minor"] + figures["held_minor"] + figures["payable_minor"] + (
            figures["paid_minor"] + figures["failed_minor"] + figures["voided_minor"]) == sums[
            f"{currency}:acquired"]
    _, feed = get(port, f"/accounts/{account}/feed", token=token)
    assert {i["id"] for i in feed["items"]} == {
        cid for cid, s in states.items() if s.holder == account}
    assert get(port, f"/accounts/{account}/feed")[0] == 401

    keys = Keys(pipeline.topics.prefix)
    for p in cluster.ports:  # every master holds some of the read model
        node = redis.Redis(port=p)
        try:
            assert any(True for _ in node.scan_iter(match=f"{keys.p}*", count=1000)), p
        finally:
            node.close()
