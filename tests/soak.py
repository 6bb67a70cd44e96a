"""`make soak`: a long run of everything that can go wrong at once (not in CI).

    python -m tests.soak [--kills 100] [--commands 100000] [--broker-restarts 3]
    python -m tests.soak --brokers 3     # on a 3-broker cluster, 10 broker kills

On a private broker: the four stages run while the commands flow; meanwhile
``--kills`` SIGKILLs land on random stages at random moments, the broker is killed and
started again ``--broker-restarts`` times, and a second worker is added to a random
stage and later removed (killed for good). With ``--brokers 3`` (`make soak
BROKERS=3`) the broker is a KRaft cluster (replication factor 3, min.insync.replicas
2) and each broker event SIGKILLs a random broker, a different one from the last
(the leader of whatever it led), starts it again and waits until every replica is in
sync before the next (default 10 of them). A supervisor restarts whatever stopped.
Then every output topic, the sequencer's verdicts and every committed table must
equal what the domain core computes from the same commands, and the audit must pass.
Prints the counts; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import msgspec

from deploy.localstack import Kafka, KafkaCluster, free_port
from tests.e2e.failover import Members
from tests.e2e.pipeline import SERVICES, Pipeline
from tests.e2e.traffic import (
    build,
    committed_table,
    differences,
    expect,
    expected_table,
    settled,
)

encode_state = msgspec.msgpack.Encoder().encode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak")
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--certificates", type=int, default=1_000)
    parser.add_argument("--broker-restarts", type=int, default=None,
                        help="broker kills: 3 by default, 10 with --brokers > 1")
    parser.add_argument("--brokers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="commission-soak-"))
    if args.broker_restarts is None:
        args.broker_restarts = 3 if args.brokers == 1 else 10
    if args.brokers > 1:
        kafka = KafkaCluster.on_free_ports(work / "kafka", args.brokers)
    else:
        kafka = Kafka(run_dir=work / "kafka", port=free_port(), controller_port=free_port())
    kafka.start()
    started = time.monotonic()
    replicas = kafka.replication_factor if args.brokers > 1 else 1
    pipeline = Pipeline(kafka.bootstrap, f"soak-{int(time.time())}", work / "logs",
                        replication_factor=replicas)
    members = Members(kafka, pipeline.topics.all()) if args.brokers > 1 else None
    last_killed: list[int] = []
    counts: Counter = Counter()
    try:
        commands = build(args.certificates, args.commands, seed=args.seed,
                         t0_ms=int(time.time() * 1000))
        expected = expect(commands)
        print(f"{len(commands)} commands over {args.certificates} certificates; the core "
              f"says {sum(expected.topics['settlements'].values())} settlements", flush=True)
        pipeline.start_all()
        pipeline.via_captures = True  # purchases and results through the captures stage
        done = pipeline.feed_in_background(commands, every=500, pause_s=0.2)
        stop = threading.Event()
        lock = threading.Lock()  # the supervisor and the events both start processes

        def supervise() -> None:
            while not stop.is_set():
                with lock:
                    for key in pipeline.restart_exited():
                        counts[f"restarted {key[0]}"] += 1
                time.sleep(0.3)

        threading.Thread(target=supervise, daemon=True).start()
        # what happens when: kills, broker restarts, a worker added then removed
        events = ["kill"] * args.kills + ["broker"] * args.broker_restarts + ["add", "remove"]
        rng.shuffle(events)
        if events.index("remove") < events.index("add"):
            i, j = events.index("remove"), events.index("add")
            events[i], events[j] = events[j], events[i]
        extra = rng.choice(SERVICES)

        def happen(event: str) -> None:
            if event == "kill":
                service = rng.choice(SERVICES)
                if (service, 0) in pipeline.procs:
                    pipeline.signal(service, sig=signal.SIGKILL)
                    pipeline.start(service)
                    counts[f"killed {service}"] += 1
            elif event == "broker" and members is not None:
                node = rng.choice([n for n in kafka.node_ids if n not in last_killed[-1:]])
                last_killed.append(node)
                led = len(members.led_by(node))
                kafka.kill(node)
                time.sleep(1)
                kafka.start([node])
                members.wait_all_in_sync()
                counts[f"broker kills (node {node})"] += 1
                counts["partitions whose leader was killed"] += led
            elif event == "broker":
                kafka.kill()
                time.sleep(1)
                kafka.start()
                counts["broker restarts"] += 1
            elif event == "add":
                pipeline.start(extra, instance=1)
                counts[f"added a worker to {extra}"] += 1
            else:
                if (extra, 1) in pipeline.procs:
                    pipeline.signal(extra, instance=1, sig=signal.SIGKILL)
                counts[f"removed the worker of {extra}"] += 1

        for event in events:
            time.sleep(rng.uniform(0.2, 1.2))
            with lock:
                happen(event)
        assert done.wait(3_600), "the commands were not all sent"
        # the core's computation from the commands as the pipeline received them
        # (the broker's time, the timer's releases), compared topic by topic
        expected = settled(pipeline)
        deadline = time.monotonic() + 900
        while (problems := differences(pipeline, expected)) and time.monotonic() < deadline:
            time.sleep(5)
            expected = settled(pipeline)
        print("outputs, accepted and rejections equal the core's" if not problems
              else f"differences: {problems}", flush=True)
        ok = not problems
        for service in SERVICES:
            want_states = expected_table(pipeline, expected, service)
            deadline = time.monotonic() + 300
            while True:
                got_states = committed_table(pipeline, service)
                if got_states == want_states or time.monotonic() > deadline:
                    break
                time.sleep(2)
            differ = sum(got_states.get(c) != w for c, w in want_states.items())
            print(f"{service} table: {len(got_states)} rows, {differ} differ from the core")
            ok &= differ == 0
        stop.set()
        report = pipeline.audit()
        print(f"audit: ok={report.ok}, {report.certificates} certificates, "
              f"{report.settlements} settlements, problems {report.problems[:5]}")
        ok &= report.ok
        print("events: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        print(f"{'PASSED' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s; "
              f"logs in {work}")
        return 0 if ok else 1
    finally:
        pipeline.stop_all()
        pipeline.sender.close()
        kafka.stop()


if __name__ == "__main__":
    sys.exit(main())
