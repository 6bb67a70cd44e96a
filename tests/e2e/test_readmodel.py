"""The read model (a faust app) projects the pipeline into Redis: every certificate
page, feed, earning and catalogue entry equals what follows from the domain core's
final states; after Redis is wiped, replaying the topic rebuilds the same thing."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections import defaultdict

import msgspec
import redis
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, TopicPartition

from deploy.localstack import free_port
from domain import CertificateState
from domain.review import kept_back
from schemas.commands import AcceptedCommand
from schemas.payments import CommissionPayout
from services.common.metrics import scrape, total
from services.readmodel import statecopy
from services.readmodel.projection import NO_DEADLINE, Keys, page
from tests.e2e.http import get, wait_for
from tests.e2e.traffic import build, expect, settled


def expected_earnings(states: dict[str, CertificateState]) -> dict[str, dict[str, int]]:
    """Each account's sums by kind, from the final states alone (zero sums left out:
    the projection adds and takes away, so a sum may be a stored 0)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in states.values():
        pool = s.pool
        if pool is None:
            continue
        for account, amount in pool.acquired.items():
            sums = out[account]
            sums[f"{s.currency}:acquired"] += amount
            if account in pool.declined:  # a review voided it (refunds voided the rest)
                sums[f"{s.currency}:voided"] += amount
            elif kept_back(s, pool, account):  # flagged: held past the hold's end
                sums[f"{s.currency}:held"] += pool.payouts[account]
                sums[f"{s.currency}:voided"] += amount - pool.payouts[account]
            elif account in pool.payouts:  # it reached a purchase
                kept = pool.payouts[account]  # less what refunds in the hold voided
                if kept:  # a payout refunded to nothing within the hold is never published
                    sums[f"{s.currency}:held" if s.held_until_ms is not None
                         else f"{s.currency}:{payout_status(s, account)}"] += kept
                sums[f"{s.currency}:voided"] += amount - kept
                sums[f"{s.currency}:clawed_back"] += pool.clawed.get(account, 0)
            elif pool.status == "withdrawn":  # voided, or the certificate ended unsold
                sums[f"{s.currency}:voided"] += amount
    return {a: {k: v for k, v in sums.items() if v} for a, sums in out.items()}


def payout_status(state: CertificateState, account: str) -> str:
    """Where an account's published payout stands with the payment system."""
    [entry] = [e for e in state.payments.values()
               if isinstance(e.settlement, CommissionPayout) and e.settlement.payee_id == account]
    return {"awaiting": "payable", "settled": "paid", "parked": "failed"}[entry.status]


def wait_projected(pipeline, client: redis.Redis, keys: Keys,
                   states: dict[str, CertificateState], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pipeline.assert_running()
        with client.pipeline(transaction=False) as p:
            for cid in states:  # the page's seq is written with the state copy
                p.hget(keys.cert(cid), "seq")
            seqs = p.execute()
        if all(raw is not None and int(raw) == states[cid].seq
               for cid, raw in zip(states, seqs, strict=True)):
            return
        time.sleep(0.5)
    raise AssertionError("the read model did not catch up")


def check(client: redis.Redis, keys: Keys, states: dict[str, CertificateState]) -> None:
    for cid, state in states.items():
        got = {k.decode(): v.decode() for k, v in client.hgetall(keys.cert(cid)).items()}
        want = page(state)
        assert {k: got.get(k) for k in want} == want, cid
        assert got["name"] == "Load item"
    holders = defaultdict(set)
    for cid, state in states.items():
        if state.holder is not None:
            holders[state.holder].add(cid)
    for account, held in holders.items():
        assert {m.decode() for m in client.zrange(keys.feed(account), 0, -1)} == held, account
    for account, want in expected_earnings(states).items():
        got = {k.decode(): int(v) for k, v in client.hgetall(keys.earnings(account)).items()
               if int(v)}
        assert got == want, account
    catalogue = {m.decode(): s for m, s in client.zrange(keys.by_commission, 0, -1,
                                                         withscores=True)}
    on_sale = {cid: (s.pool.attached_minor if s.pool.status == "open" else 0)
               for cid, s in states.items() if s.status == "posted"}
    assert catalogue == on_sale
    deadlines = {m.decode(): s for m, s in client.zrange(keys.by_deadline, 0, -1,
                                                        withscores=True)}
    assert set(deadlines) == set(on_sale)
    assert all(v == NO_DEADLINE for v in deadlines.values())  # this traffic has no limit


def test_projections_match_the_core_and_rebuild_after_a_wipe(pipeline, stack):
    commands = build(30, 1_500, seed=41, t0_ms=int(time.time() * 1000))
    pipeline.start_all()
    probe_port = free_port()
    pipeline.start("readmodel", metrics_port=probe_port)
    api_port = free_port()
    pipeline.start("api", API_PORT=str(api_port), API_OPS_PORT=str(free_port()))
    pipeline.send(*commands)
    client = redis.Redis.from_url(stack.redis_url)
    keys = Keys(pipeline.topics.prefix)
    expected = settled(pipeline)  # the core's, from the commands as received
    states = expected.states
    try:
        wait_projected(pipeline, client, keys, states)
        check(client, keys, states)
        ready = wait_for(probe_port, "/readyz", lambda b: b["ok"], pipeline=pipeline)
        assert ready == {"ok": True, "redis": True, "rebalancing": False}
        # each accepted command projected once, and timed; every refusal recorded
        accepted = sum(state.seq for state in states.values())
        want = {("commission_readmodel_commands_total", "projected"): accepted,
                ("commission_readmodel_commands_total", "skipped"): 0,
                ("commission_readmodel_trail_seconds_count", None): accepted,
                ("commission_readmodel_rejections_total", None): sum(
                    expected.rejections.values())}

        def counted() -> dict:
            samples = scrape(probe_port)
            return {(name, outcome): total(samples, name, **({"outcome": outcome}
                                                              if outcome else {}))
                    for name, outcome in want}

        deadline = time.monotonic() + 30
        while (got := counted()) != want and time.monotonic() < deadline:
            time.sleep(0.5)
        assert got == want

        # Redis lost: wipe every key of this read model; the same read model (same
        # group, whose offsets stand at the end) finds no position in Redis and
        # rebuilds from the topics, saying so in its log, metrics and Redis
        pipeline.signal("readmodel")
        for key in client.scan_iter(match=f"{keys.p}*", count=1000):
            client.delete(key)
        assert not list(client.scan_iter(match=f"{keys.p}*"))
        pipeline.start("readmodel", metrics_port=probe_port)
        wait_projected(pipeline, client, keys, states)
        check(client, keys, states)
        deadline = time.monotonic() + 30
        while client.hget(f"{keys.p}progress", "state") != b"live":
            assert time.monotonic() < deadline, client.hgetall(f"{keys.p}progress")
            time.sleep(0.5)
        samples = scrape(probe_port)
        assert total(samples, "commission_readmodel_rebuilding") == 0
        assert total(samples, "commission_readmodel_behind_records") == 0
        log = (pipeline.logs / "readmodel-0.log").read_text()
        # accepted, rejections and payments (the payouts' net: issue #24), 4 each
        assert "rebuilding: no position in Redis for 12 partitions" in log
        payments = len(pipeline.read(pipeline.topics.payments))
        assert (f"rebuilt: {accepted + sum(expected.rejections.values()) + payments} "
                "records") in log
        assert "catching_up" not in get(api_port, "/catalogue?sort=commission")[1]

        # Redis lost again, and the rebuild cut short (batches of 100, SIGKILLed after
        # 400 projections): the API's reads and the pages say the figures are catching
        # up, with where the rebuild stood, instead of showing them as they are
        pipeline.signal("readmodel")
        for key in client.scan_iter(match=f"{keys.p}*", count=1000):
            client.delete(key)
        pipeline.start("readmodel", metrics_port=probe_port,
                       COMMISSION_READMODEL_MAX_RECORDS="100",
                       COMMISSION_READMODEL_KILL_AFTER="400")
        deadline = time.monotonic() + 60
        while pipeline.procs[("readmodel", 0)].poll() is None:
            assert time.monotonic() < deadline, "the read model was not killed"
            time.sleep(0.1)
        pipeline.procs.pop(("readmodel", 0))
        records = accepted + sum(expected.rejections.values()) + payments
        status, body = get(api_port, "/catalogue?sort=commission")
        progress = body["catching_up"]
        assert status == 200 and progress["state"] == "rebuilding", body
        # records: offsets (transaction markers included) of the partitions whose end
        # the worker had fetched when it was killed: an estimate of what is left
        assert 400 <= progress["records_done"] < progress["records_total"], progress
        assert progress["records_done"] < records
        assert progress["rate_per_s"] >= 0
        for cid in states:  # projected already or not, a certificate says it too
            assert "catching_up" in get(api_port, f"/certificates/{cid}")[1], cid
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/") as response:
            html = response.read().decode()
        assert "is being rebuilt from the event log: " in html
        assert f"{progress['records_done']:,} of {progress['records_total']:,} records" in html
        pipeline.start("readmodel", metrics_port=probe_port)
        wait_projected(pipeline, client, keys, states)
        check(client, keys, states)
        wait_for(api_port, "/catalogue?sort=commission", lambda b: "catching_up" not in b,
                 pipeline=pipeline)
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/") as response:
            assert "catching-up" not in response.read().decode()
    finally:
        client.close()


def test_a_record_of_an_aborted_transaction_is_not_projected(pipeline, stack):
    """The circulation service publishes ``accepted`` in transactions; one it aborts
    (killed, fenced) may never be decided the same way again (a signing key removed,
    a deploy in between), so the read model must not show it."""
    commands = build(2, 2, seed=47, t0_ms=int(time.time() * 1000))
    issued = {}
    for command in commands:
        issued.setdefault(command.certificate_id, command)
    (ghost, ghost_cmd), (real, real_cmd) = issued.items()
    now_ms = int(time.time() * 1000)
    encode = msgspec.json.Encoder().encode

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, enable_idempotence=True,
                                    transactional_id=f"{pipeline.settings.group_prefix}-tx")
        await producer.start()
        try:
            for cid, command, commit in ((ghost, ghost_cmd, False), (real, real_cmd, True)):
                await producer.begin_transaction()
                # one partition, the aborted record first: once the real one is
                # projected, the read model has read past the ghost
                await producer.send_and_wait(
                    pipeline.topics.accepted, key=cid.encode(), partition=0,
                    value=encode(AcceptedCommand(seq=1, received_ms=now_ms, command=command)))
                if commit:
                    await producer.commit_transaction()
                else:
                    await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(publish())
    pipeline.start("readmodel")
    client = redis.Redis.from_url(stack.redis_url)
    keys = Keys(pipeline.topics.prefix)
    try:
        wait_projected(pipeline, client, keys, {real: expect([real_cmd]).states[real]})
        assert client.exists(keys.state(ghost), statecopy.row_key(keys, ghost)) == 0
        assert client.hgetall(keys.cert(ghost)) == {}
        assert client.hgetall(keys.outcome(ghost_cmd.command_id)) == {}
    finally:
        client.close()


def committed_and_end(pipeline, group: str) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offset and the end offset (read_committed: the last
    stable offset) of every partition of ``accepted``."""
    consumer = Consumer({"bootstrap.servers": pipeline.settings.bootstrap, "group.id": group,
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        tps = [TopicPartition(pipeline.topics.accepted, p)
               for p in range(pipeline.settings.partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        end = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        return committed, end
    finally:
        consumer.close()


def test_a_killed_read_model_resumes_where_its_projections_stand(pipeline, stack):
    """SIGKILL the read model twice while commands flow: once right after a batch
    reached Redis, before the group's offsets were committed
    (COMMISSION_READMODEL_KILL_AFTER), once at a moment of the test's choosing. Each
    restart of the slot resumes from the positions Redis stores with the projections
    (one script writes both): it meets no record projected already (the faust agent
    before issue #25 re-read from a group offset that lagged ever further behind),
    projects each command once, and, once the load ends, has committed the group's
    offsets up to the end of ``accepted``."""
    commands = build(30, 2_000, seed=61, t0_ms=int(time.time() * 1000))
    pipeline.start_all()
    client = redis.Redis.from_url(stack.redis_url)
    keys = Keys(pipeline.topics.prefix)
    ports = [free_port() for _ in range(3)]

    def counted(port: int, outcome: str) -> float:
        try:
            return total(scrape(port), "commission_readmodel_commands_total", outcome=outcome)
        except OSError:
            return -1.0  # gone, or not serving yet

    try:
        pipeline.start("readmodel", metrics_port=ports[0], COMMISSION_READMODEL_KILL_AFTER="300")
        first, second = commands[:1_000], commands[1_000:]
        first_done = pipeline.feed_in_background(first, every=100, pause_s=0.2)
        deadline = time.monotonic() + 120
        while pipeline.procs[("readmodel", 0)].poll() is None:
            assert time.monotonic() < deadline, "the read model was not killed"
            time.sleep(0.1)
        assert pipeline.procs.pop(("readmodel", 0)).returncode == -signal.SIGKILL
        # the same slot again (a supervisor's restart), then killed by the test while
        # the second half of the commands flows
        pipeline.start("readmodel", metrics_port=ports[1])
        assert first_done.wait(60)
        done = pipeline.feed_in_background(second, every=100, pause_s=0.2)
        wait_for_projections = time.monotonic() + 60
        while counted(ports[1], "projected") < 1:
            assert time.monotonic() < wait_for_projections, "the restarted read model is idle"
            time.sleep(0.1)
        assert counted(ports[1], "skipped") == 0
        pipeline.signal("readmodel", sig=signal.SIGKILL)
        restarted = time.monotonic()
        pipeline.start("readmodel", metrics_port=ports[2])
        assert done.wait(120)
        states = settled(pipeline).states
        wait_projected(pipeline, client, keys, states)
        print(f"caught up {time.monotonic() - restarted:.1f} s after the second restart")
        check(client, keys, states)
        assert counted(ports[2], "skipped") == 0
        group = f"{pipeline.settings.group_prefix}-readmodel"
        deadline = time.monotonic() + 30
        while (offsets := committed_and_end(pipeline, group))[0] != offsets[1]:
            assert time.monotonic() < deadline, f"committed, end: {offsets}"
            time.sleep(0.5)
    finally:
        client.close()
