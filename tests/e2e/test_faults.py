"""Every stage stopped at every named point of a round (services/common/faults.py):
killed there, or fenced there (another producer takes its transactional id), and
restarted. Whatever the point, the outputs, the rejections and every committed
table equal what the domain core computes from the input, each record once.

One run per point, all four stages faulted at that point in the same run (two
killed, two fenced; each at its second round with work, so the first round's effects
are committed and the fault lands mid-stream)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from deploy.localstack import free_port
from schemas import commands as c
from services.common.faults import POINTS
from services.common.metrics import scrape, total
from tests.e2e.pipeline import SERVICES
from tests.e2e.traffic import (
    assert_outputs_as_expected,
    build,
    committed_table,
    expect,
    expected_table,
)


def check_against_the_core(pipeline, commands) -> None:
    assert expect(commands).accepted, "the traffic must be accepted at all"
    expected = assert_outputs_as_expected(pipeline, timeout_s=120)
    for service in SERVICES:
        want_states = expected_table(pipeline, expected, service)
        # a stage whose last inputs publish nothing of its own may still be applying
        # them: its table must get there, and stay exact on the way
        deadline = time.monotonic() + 60
        while True:
            # a stage that stopped for a restart after its last output (its last inputs
            # publish nothing) is restarted here too when the test supervises
            pipeline.assert_running()
            got_states = committed_table(pipeline, service)
            if got_states == want_states or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert got_states == want_states, service
    report = pipeline.audit()
    assert report.ok, report.problems[:10]


@pytest.mark.parametrize("point", POINTS)
def test_a_stage_stopped_at_any_point_of_a_round_loses_and_repeats_nothing(pipeline, point):
    # at every point two stages are killed and two fenced, the pairs alternating from
    # one point to the next: each stage meets both actions, every point both
    shift = POINTS.index(point) % 2
    actions = {service: ("kill", "fence")[(i + shift) % 2]
               for i, service in enumerate(SERVICES)}
    commands = build(12, 400, seed=71, t0_ms=int(time.time() * 1000))
    pipeline.via_captures = True
    for service in SERVICES:
        pipeline.start(service, COMMISSION_FAULTS=f"{point}@2:{actions[service]}")
    done = pipeline.feed_in_background(commands, every=50, pause_s=0.2)
    faulted: Counter = Counter()
    deadline = time.monotonic() + 90
    tail_seed = 1_000
    while not done.is_set() or len(faulted) < len(SERVICES):
        # a supervisor: start again, without the fault, what stopped
        for service, _ in pipeline.restart_exited():
            faulted[service] += 1
        if done.is_set() and len(faulted) < len(SERVICES):
            # A worker fenced while idle learns it at its next transaction: give every
            # stage more rounds (new certificates, so the expectation stays exact).
            tail_seed += 1
            tail = build(1, 12, seed=tail_seed, t0_ms=int(time.time() * 1000))
            # and a round for the captures stage: a result for no settlement, refused
            tail.append(c.ReportPayment(
                command_id=f"result:{tail_seed:064x}:1", certificate_id=tail[0].certificate_id,
                at_ms=int(time.time() * 1000), settlement_id=f"{tail_seed:064x}", attempt=1,
                result="settled"))
            pipeline.send(*tail)
            commands += tail
        if time.monotonic() > deadline:
            raise AssertionError(f"only {sorted(faulted)} stopped at {point} ({actions})")
        time.sleep(0.3)
    assert set(faulted) == set(SERVICES)
    check_against_the_core(pipeline, commands)
    pipeline.assert_running()


@pytest.mark.parametrize("points", [POINTS[:4], POINTS[4:]], ids=["first-half", "second-half"])
def test_the_broker_restarts_while_stages_stand_at_each_point(pipeline, stack, tmp_path,
                                                              points):
    """Each stage is held at its own point (``pause``), the broker is killed and
    started again, then the stages go on: what they had open fails or completes, and
    whatever happened, the result is the core's. (``during_commit``: the hold starts
    a moment after the commit is sent, so the restart lands while it is in flight or
    just after.)"""
    assert stack.kafka is not None, "the tests start their own broker"
    folder = tmp_path / "faults"
    folder.mkdir()
    pipeline.via_captures = True
    held = dict(zip(SERVICES, points, strict=False))
    for service in SERVICES:
        # the followers' rounds need the sequencer's output: it holds last
        nth = 4 if service == "circulation" else 2
        env = ({"COMMISSION_FAULTS": f"{held[service]}@{nth}:pause",
                "COMMISSION_FAULT_DIR": str(folder)} if service in held else {})
        pipeline.start(service, **env)
    # a stage held with its transaction open is aborted by the coordinator after the
    # transaction timeout (10 s) and stops (exit 75): a supervisor restarts it
    pipeline.supervised = True
    commands: list = []
    deadline = time.monotonic() + 120  # generous: CI runs this on a loaded machine
    seed = 2_000
    while not all((folder / f"{p}.paused").exists() for p in held.values()):
        # traffic until every stage stands at its point: each round needs input
        assert time.monotonic() < deadline, sorted(x.name for x in folder.iterdir())
        pipeline.assert_running()
        seed += 1
        more = build(1, 12, seed=seed, t0_ms=int(time.time() * 1000))
        pipeline.send(*more)
        commands += more
        time.sleep(0.3)
    stack.kafka.kill()
    time.sleep(1)
    stack.kafka.start()
    for point in held.values():
        (folder / f"{point}.resume").touch()
    more = build(3, 60, seed=seed + 1, t0_ms=int(time.time() * 1000))
    pipeline.send(*more)  # and more after the restart (the producer retries meanwhile)
    commands += more
    check_against_the_core(pipeline, commands)


def test_a_group_that_moves_on_mid_round_aborts_the_round_and_goes_on(pipeline):
    """Another member joins each stage's group while a round is between its changelog
    rows and its offsets: the offsets carry the old generation and are refused
    (ILLEGAL_GENERATION). The worker aborts the round, restores its partitions from
    the changelog and goes on, without a restart; nothing is lost or applied twice."""
    ports = {service: free_port() for service in SERVICES}
    pipeline.via_captures = True
    for service in SERVICES:
        # the captures stage sees only the purchases and payment results, which may
        # reach it in a single round: the join comes in its first
        nth = 1 if service == "captures" else 2
        pipeline.start(service, metrics_port=ports[service],
                       COMMISSION_FAULTS=f"after_changelog@{nth}:join")
    # seed 71: ~100 settlements over the stream, so netting has rounds to abort too
    commands = build(12, 400, seed=71, t0_ms=int(time.time() * 1000))
    assert pipeline.feed_in_background(commands, every=50, pause_s=0.2).wait(120)
    check_against_the_core(pipeline, commands)
    pipeline.assert_running()  # no worker stopped: the abort is handled in place
    for service, port in ports.items():
        assert total(scrape(port), "commission_rounds_aborted_total") >= 1, service
