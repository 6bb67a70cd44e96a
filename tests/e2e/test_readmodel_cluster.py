"""The read model and the API on a Redis Cluster (issue #25 point 4): three masters
from Debian's redis-server (deploy/localstack.py RedisCluster), REDIS_URL
redis+cluster://. Traffic projected into the cluster and read through the API: the
catalogue and certificate pages through the API, every account's earnings and feed
in the cluster, equal what follows from the domain core; a login (sessions and
throttling keys) and an account's own reads through the API; the read model's keys
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
    # every account's earnings and feed, as the cluster holds them (the traffic's
    # accounts have no login), then a login's session and throttling keys on the
    # cluster, and the API's own reads of an account (alice: none of this traffic)
    keys = Keys(pipeline.topics.prefix)
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        for account, want in expected_earnings(states).items():
            got = {k.decode(): int(v) for k, v in client.hgetall(keys.earnings(account)).items()
                   if int(v)}
            assert got == want, account
            held = {cid for cid, s in states.items() if s.holder == account}
            assert {m.decode() for m in client.zrange(keys.feed(account), 0, -1)} == held
    finally:
        client.close()
    token = login(port, "alice")
    status, got = get(port, "/accounts/alice/earnings", token=token)
    assert status == 200 and got["earnings"] == {} and "catching_up" not in got
    status, feed = get(port, "/accounts/alice/feed", token=token)
    assert status == 200 and feed["items"] == []
    assert get(port, "/accounts/alice/feed")[0] == 401

    for p in cluster.ports:  # every master holds some of the read model
        node = redis.Redis(port=p)
        try:
            assert any(True for _ in node.scan_iter(match=f"{keys.p}*", count=1000)), p
        finally:
            node.close()
