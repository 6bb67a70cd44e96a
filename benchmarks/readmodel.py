"""The read model against the sequencer: how fast it projects, and how far it trails.

    python -m benchmarks.readmodel [--commands 40000] [--rate R] [--seconds 60] [--write]

``make bench`` runs it after benchmarks.pipeline, with ``--write``: the paced rate is
then half the pipeline's flat-out rate measured by that same ``make bench``
(benchmarks/results/pipeline.json), and the figures go to docs/benchmarks.md next to
it (and benchmarks/results/readmodel.json). Targets (issue #25): flat out at least
the pipeline's rate; p99 trail <= 500 ms at half the pipeline's maximum.

On its own broker and Redis (or KAFKA_BOOTSTRAP_SERVERS and REDIS_URL), on fresh
topics, only the circulation stage runs (the read model reads ``accepted`` and
``rejections``, which only it writes):

1. flat out: ``--commands`` generated commands are sent and sequenced first; then the
   read model starts and projects the whole topic. The rate counts the projections
   (``commission_readmodel_commands_total``) from the first one to the last.
2. trail: with the read model caught up, ``--rate`` commands/s for ``--warmup`` +
   ``--seconds``; the commands accepted in the first ``--warmup`` seconds (the
   after-effects of the flat-out phase: Redis rewriting the AOF it grew, caches) are
   reported apart, as the pipeline's latency is after its warm-up; for the others,
   the trail of each accepted command is its outcome's ``projected_ms`` less
   ``accepted_ms`` (the accepted record's timestamp), as the metric
   ``commission_readmodel_trail_seconds`` observes it. That timestamp is taken when
   the sequencer produces the record, inside its transaction, and no consumer may
   read the record before the transaction commits; so the trail is split in two:
   **upstream**, ``visible_ms - accepted_ms``, when a read_committed probe consumer
   in this process (librdkafka) first got the record: the
   sequencer's transaction and the broker, which the read model cannot change; and
   the **read model's own part**, ``projected_ms - visible_ms``.
   CPU seconds per process over the paced phase are reported with it.

Without ``--write`` it prints the figures and writes nothing. To look for what makes
a burst in the trail: ``--series FILE`` writes each paced command's accepted, readable
and projected times; ``--redis-config NAME=VALUE`` sets Redis up otherwise for a run;
``--rewrite-at S`` has Redis rewrite its AOF S seconds into the measured part (how
the bursts were traced to the AOF rewrites: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import psutil
import redis
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaPartition

from benchmarks.core import machine
from benchmarks.generator import Sender, TrafficSpec, generate
from deploy.localstack import Kafka, Redis, free_port, read_pid
from services.common.auth import Keyring
from services.common.metrics import scrape, total
from services.common.settings import Settings, Topics
from services.common.topics import ensure_topics
from services.readmodel.projection import Keys

ROOT = Path(__file__).resolve().parent.parent
PROJECTED = "commission_readmodel_commands_total"
PIPELINE_JSON = ROOT / "benchmarks" / "results" / "pipeline.json"
RESULTS_JSON = ROOT / "benchmarks" / "results" / "readmodel.json"
RESULTS_MD = ROOT / "docs" / "benchmarks.md"


class _Command(msgspec.Struct):
    command_id: str


class _Accepted(msgspec.Struct):
    command: _Command


_decode_accepted = msgspec.json.Decoder(_Accepted).decode


class Visible(threading.Thread):
    """A read_committed consumer of ``accepted`` from its end: when each command's
    accepted record could first be read (ms), what the read model cannot beat."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.at_ms: dict[str, int] = {}
        self.stopping = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        s = self.settings
        consumer = Consumer({"bootstrap.servers": s.bootstrap, "group.id": "bench-visible",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             **s.kafka_auth.librdkafka()})
        try:
            tps = []
            for p in range(s.partitions):
                tp = KafkaPartition(s.topics.accepted, p)
                tp.offset = consumer.get_watermark_offsets(tp, timeout=10)[1]
                tps.append(tp)
            consumer.assign(tps)
            self.ready.set()
            at = self.at_ms
            while not self.stopping.is_set():
                batch = consumer.consume(10_000, 0.05)
                now = int(time.time() * 1000)
                for r in batch:
                    if r.error() is None:
                        at.setdefault(_decode_accepted(r.value()).command.command_id, now)
        finally:
            consumer.close()


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User+system CPU seconds each process used so far (its own, not its children's)."""
    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = 0.0
    return out


def percentiles(values: list[int]) -> dict:
    values = sorted(values)
    if not values:
        return {"n": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}

    def pct(q: float) -> int:
        return values[min(len(values) - 1, int(q * len(values)))]
    return {"n": len(values), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
            "max": values[-1]}


LOOP = ("commission_readmodel_batch_records_count", "commission_readmodel_batch_records_sum",
        "commission_readmodel_script_seconds_count", "commission_readmodel_script_seconds_sum",
        "commission_readmodel_redis_wait_seconds_total")


def loop_figures(ports: list[int]) -> dict[str, float]:
    """The read-model workers' batch counters (services/readmodel/consumer.py), summed."""
    out = dict.fromkeys(LOOP, 0.0)
    for port in ports:
        samples = scrape(port)
        for name in LOOP:
            out[name] += total(samples, name)
    return out


def fsync_figures(client: redis.Redis) -> dict[str, int]:
    """Redis's own record of its slow AOF fsyncs (latency monitor: the slowest of each
    second, if 1 ms or more): in how many seconds, their mean and the slowest, in ms."""
    history = client.execute_command("LATENCY", "HISTORY", "aof-fsync-always") or []
    worst = [int(ms) for _, ms in history]
    return {"slow_fsync_seconds": len(worst),
            "slowest_fsync_ms_mean": round(sum(worst) / len(worst)) if worst else 0,
            "slowest_fsync_ms": max(worst, default=0)}


def redis_figures(client: redis.Redis) -> dict[str, float]:
    """Redis's own: scripts run and their time, AOF rewrites and fsyncs it delayed."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    persistence = client.info("persistence")
    return {"scripts": float(stats.get("calls", 0)), "script_us": float(stats.get("usec", 0)),
            "aof_rewrites": float(persistence.get("aof_rewrites", 0)),
            "aof_delayed_fsync": float(persistence.get("aof_delayed_fsync", 0))}


def pipeline_rate() -> float | None:
    """The pipeline's flat-out commands/s from the last benchmarks.pipeline run."""
    try:
        return float(json.loads(PIPELINE_JSON.read_text())["runs"]["pipeline"]["rate"])
    except (OSError, KeyError, ValueError):
        return None


def markdown(r: dict) -> str:
    pipe = r["pipeline_rate"]
    flat_ok = pipe is not None and r["flat_rate"] >= pipe
    trail, up, own, b = r["trail"], r["upstream"], r["own"], r["batches"]
    return (
        f"\n### Read model, {r['when']}\n\n"
        f"Command: `{r['command']}`  \n"
        f"Machine: {r['machine']}; one Kafka broker and one Redis ({r['redis']}), "
        f"{r['partitions']} partitions; the sequencer and {r['workers']} read-model worker(s) run, "
        "nothing else. "
        f"The pipeline's rate is its flat-out figure from `{PIPELINE_JSON.name}` "
        f"({r['pipeline_when']}).\n\n"
        "| figure | measured | target | met |\n| --- | ---: | --- | --- |\n"
        f"| flat out, projections/s ({r['flat_records']} accepted records) | "
        f"{r['flat_rate']:,.0f} | >= the pipeline's {pipe or 0:,.0f} commands/s | "
        f"{'yes' if flat_ok else 'no'} |\n"
        f"| trail p50 at {r['paced_rate']:,.0f} commands/s ({trail['n']} projections) | "
        f"{trail['p50']} ms | | |\n"
        f"| trail p99 at {r['paced_rate']:,.0f} commands/s | {trail['p99']} ms | <= 500 ms at half "
        f"the pipeline's maximum | {'yes' if trail['p99'] <= 500 else 'no'} |\n"
        f"| trail max | {trail['max']} ms | | |\n"
        f"| of it upstream (accepted record to readable) p50 / p99 | {up['p50']} / {up['p99']} ms"
        " | | |\n"
        f"| of it the read model's own (readable to projected) p50 / p99 | "
        f"{own['p50']} / {own['p99']} ms | | |\n"
        f"| the first {r['warmup_s']:.0f} s of the paced phase (warm-up, left out above): "
        f"p50 / p99 / max | {r['warmup_trail']['p50']} / {r['warmup_trail']['p99']} / "
        f"{r['warmup_trail']['max']} ms | | |\n\n"
        "Trail: each paced command's `projected_ms - accepted_ms` from its outcome in Redis "
        "(the accepted record's timestamp to the script that projected it), what "
        "`commission_readmodel_trail_seconds` observes. Upstream: from that timestamp, "
        "taken by the sequencer inside its transaction, to when a read_committed probe "
        "consumer first read the record (the transaction's commit and the broker); the "
        "read model's own part: from then to the script "
        f"({own['n']} commands matched). CPU seconds over the paced "
        f"{r['paced_seconds']} s (and the drain after it): "
        + ", ".join(f"{k} {v}" for k, v in r['cpu_seconds'].items()) + ". "
        f"Batches meanwhile: {b['batches']} of {b['records_per_batch']} records on average; "
        f"Redis answered a batch's script in {b['script_answer_ms']} ms on average (the "
        f"script itself {b['script_run_ms']} ms, the rest its fsync and the wait for a "
        f"core); the loop waited for those answers {b['waited_for_redis_s']} s in all; "
        f"AOF rewrites {b['aof_rewrites']}; Redis's latency monitor (`appendfsync always`): "
        f"in {b['slow_fsync_seconds']} seconds an fsync took 1 ms or more, the slowest of "
        f"each second {b['slowest_fsync_ms_mean']} ms on average, the slowest of all "
        f"{b['slowest_fsync_ms']} ms.\n")


def counter(port: int, name: str, **labels: str) -> float:
    try:
        return total(scrape(port), name, **labels)
    except OSError:
        return -1.0


def wait(what: str, check, timeout_s: float, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every_s)
    raise RuntimeError(f"{what}: not within {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readmodel")
    parser.add_argument("--commands", type=int, default=40_000)
    parser.add_argument("--rate", type=float, default=None,
                        help="paced commands/s (default: half the pipeline's flat-out rate "
                             "in benchmarks/results/pipeline.json, else 1,000)")
    # a minute, not less: Redis rewrites its AOF every so often (deploy/localstack.py
    # REDIS_PERSISTENCE), each a burst in the trail, and a window of 20 s held one, two
    # or none by chance; over a minute the figure counts them about as often as they come
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds paced first and left out of the trail's figures "
                             "(reported apart): the flat-out phase's after-effects")
    parser.add_argument("--write", action="store_true",
                        help="append the figures to docs/benchmarks.md")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1,
                        help="read-model worker processes (the group splits the partitions)")
    parser.add_argument("--series", type=Path,
                        help="write each paced command's accepted, readable and projected "
                             "times (ms) to this file, one JSON line each, to look for bursts")
    parser.add_argument("--redis-config", action="append", default=[], metavar="NAME=VALUE",
                        help="CONFIG SET this first (repeatable)")
    parser.add_argument("--rewrite-at", type=float, default=None, metavar="SECONDS",
                        help="ask Redis for an AOF rewrite (BGREWRITEAOF) this many seconds "
                             "into the measured part of the paced phase")
    parser.add_argument("--appendfsync", choices=("always", "everysec", "no"),
                        help="set Redis's fsync policy first (CONFIG SET)")
    args = parser.parse_args(argv)
    pipe = pipeline_rate()
    if args.rate is None:
        args.rate = pipe / 2 if pipe else 1_000.0
    workdir = Path(tempfile.mkdtemp(prefix="commission-bench-rm-"))
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("REDIS_URL")
    servers = []
    if not bootstrap:
        kafka = Kafka(run_dir=workdir / "kafka", port=free_port(), controller_port=free_port())
        kafka.start()
        servers.append(kafka)
        bootstrap = kafka.bootstrap
    if not redis_url:
        server = Redis(run_dir=workdir / "redis", port=free_port())
        server.start()
        servers.append(server)
        redis_url = server.url
    prefix = f"bench-rm-{int(time.time())}"
    settings = Settings(bootstrap=bootstrap, topics=Topics(prefix=f"{prefix}."),
                        group_prefix=prefix, partitions=args.partitions)
    ensure_topics(settings, settings.topics.all())
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "REDIS_URL": redis_url,
           "COMMISSION_TOPIC_PREFIX": f"{prefix}.", "COMMISSION_GROUP_PREFIX": prefix,
           "COMMISSION_PARTITIONS": str(args.partitions), "LOG_LEVEL": "warning"}
    ports = {"circulation": free_port(),
             **{f"readmodel-{i}": free_port() for i in range(args.workers)}}
    procs: list[subprocess.Popen] = []
    (workdir / "logs").mkdir()

    def start(service: str, instance: int | None = None) -> None:
        name = service if instance is None else f"{service}-{instance}"
        with open(workdir / "logs" / f"{name}.log", "ab") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"], cwd=ROOT,
                env={**env, "METRICS_PORT": str(ports[name]),
                     "COMMISSION_INSTANCE": str(instance or 0)},
                stdout=log, stderr=subprocess.STDOUT))

    def projected() -> float:
        """Projections by every read-model worker (-1 while one does not answer)."""
        counts = [counter(ports[f"readmodel-{i}"], PROJECTED, outcome="projected")
                  for i in range(args.workers)]
        return -1.0 if min(counts) < 0 else sum(counts)

    sender = Sender(settings, Keyring.from_env())
    client = redis.Redis.from_url(redis_url)
    keys = Keys(settings.topics.prefix)
    try:
        if args.appendfsync:
            client.config_set("appendfsync", args.appendfsync)
        for setting in args.redis_config:
            name, _, value = setting.partition("=")
            client.config_set(name, value)
        print(f"redis: appendonly {client.config_get('appendonly')['appendonly']}, "
              f"appendfsync {client.config_get('appendfsync')['appendfsync']}", flush=True)
        start("circulation")
        items = generate(TrafficSpec(commands=args.commands, seed=3, prefix="rmflat"))
        sender.send(items)
        wait("the sequencer", lambda: counter(ports["circulation"], "commission_messages_in_total")
             >= len(items), 300)
        accepted = int(counter(ports["circulation"], "commission_messages_out_total",
                               topic=settings.topics.accepted))
        started = time.monotonic()
        for i in range(args.workers):
            start("readmodel", i)
        first = wait("a first projection", lambda: (n := projected()) > 0 and
                     (time.monotonic(), n), 120, 0.05)
        last = wait("the whole topic", lambda: (n := projected()) >= accepted
                    and (time.monotonic(), n), 900, 0.05)
        flat = (last[1] - first[1]) / (last[0] - first[0])
        print(f"flat out: {accepted} accepted records; first projection "
              f"{first[0] - started:.1f} s after start; {flat:,.0f} projections/s "
              f"({last[0] - first[0]:.1f} s)", flush=True)

        paced = generate(TrafficSpec(commands=int(args.rate * (args.warmup + args.seconds)),
                                     seed=5, prefix="rmpaced"))
        before = projected()
        handed = counter(ports["circulation"], "commission_messages_out_total",
                         topic=settings.topics.accepted)
        visible = Visible(settings)
        visible.start()
        visible.ready.wait(30)
        pids = {"sequencer": procs[0].pid, "benchmark (sender, probe)": os.getpid(),
                **{f"read model {i}": proc.pid for i, proc in enumerate(procs[1:])}}
        for server in servers:
            pid = read_pid(server.pidfile)
            if pid is not None:
                pids[type(server).__name__.lower()] = pid
        cpu_before = cpu_seconds(pids)
        rm_ports = [ports[f"readmodel-{i}"] for i in range(args.workers)]
        loop_before, redis_before = loop_figures(rm_ports), redis_figures(client)
        client.config_set("latency-monitor-threshold", 1)
        client.execute_command("LATENCY", "RESET")
        if args.rewrite_at is not None:
            threading.Timer(args.warmup + args.rewrite_at, client.bgrewriteaof).start()
        took = sender.send(paced, rate=args.rate)
        wait("the paced commands sequenced", lambda: counter(
            ports["circulation"], "commission_messages_in_total") >= len(items) + len(paced), 300)
        more = counter(ports["circulation"], "commission_messages_out_total",
                       topic=settings.topics.accepted) - handed
        wait("the paced commands projected", lambda: projected() >= before + more, 900)
        cpu = {k: round(v - cpu_before[k], 1) for k, v in cpu_seconds(pids).items()}
        loop = {k: v - loop_before[k] for k, v in loop_figures(rm_ports).items()}
        rds = {k: v - redis_before[k] for k, v in redis_figures(client).items()}
        batches = max(loop["commission_readmodel_batch_records_count"], 1)
        batch = {
            "batches": int(batches),
            "records_per_batch": round(loop["commission_readmodel_batch_records_sum"] / batches),
            "script_answer_ms": round(1000 * loop["commission_readmodel_script_seconds_sum"]
                                      / max(loop["commission_readmodel_script_seconds_count"], 1),
                                      1),
            "script_run_ms": round(rds["script_us"] / 1000 / max(rds["scripts"], 1), 1),
            "waited_for_redis_s": round(loop["commission_readmodel_redis_wait_seconds_total"], 1),
            "aof_rewrites": int(rds["aof_rewrites"]),
            "aof_delayed_fsync": int(rds["aof_delayed_fsync"]), **fsync_figures(client)}
        visible.stopping.set()
        visible.join(10)
        trails, upstream, own, warming = [], [], [], []
        with client.pipeline(transaction=False) as p:
            ids = [item.command.command_id for item in paced if item.command is not None]
            for cid in ids:
                p.hmget(keys.outcome(cid), "accepted_ms", "projected_ms")
            outcomes = [(cid, int(got[0]), int(got[1])) for cid, got in
                        zip(ids, p.execute(), strict=True) if got[0] and got[1]]
            # the warm-up: what was accepted in the first --warmup seconds of the phase
            warm_until = min((a for _, a, _ in outcomes), default=0) + args.warmup * 1000
            for cid, accepted_ms, projected_ms in outcomes:
                if accepted_ms < warm_until:
                    warming.append(projected_ms - accepted_ms)
                    continue
                trails.append(projected_ms - accepted_ms)
                seen = visible.at_ms.get(cid)
                if seen is not None:
                    upstream.append(seen - accepted_ms)
                    own.append(projected_ms - seen)
        if args.series:
            with args.series.open("w") as f:
                for cid, accepted_ms, projected_ms in outcomes:
                    f.write(json.dumps([accepted_ms, visible.at_ms.get(cid), projected_ms])
                            + "\n")
        trail, up, mine = percentiles(trails), percentiles(upstream), percentiles(own)
        warm = percentiles(warming)
        print(f"trail at {len(paced) / took:,.0f} commands/s for {took:.0f} s "
              f"({len(trails)} projections): p50 {trail['p50']} ms, p90 {trail['p90']} ms, "
              f"p99 {trail['p99']} ms, max {trail['max']} ms", flush=True)
        print(f"  upstream (accepted record to readable): p50 {up['p50']} ms, "
              f"p99 {up['p99']} ms; the read model's own (readable to projected): "
              f"p50 {mine['p50']} ms, p99 {mine['p99']} ms ({mine['n']} matched)", flush=True)
        print(f"  the first {args.warmup:.0f} s (warm-up, left out above): p50 {warm['p50']} ms, "
              f"p99 {warm['p99']} ms, max {warm['max']} ms", flush=True)
        print(f"  CPU seconds over the paced phase ({took:.0f} s): {cpu}", flush=True)
        print(f"  batches: {batch}", flush=True)
        result = {
            "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m benchmarks.readmodel " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "machine": machine(), "partitions": args.partitions, "workers": args.workers,
            "redis": "appendfsync " + client.config_get("appendfsync")["appendfsync"],
            "pipeline_rate": pipe, "pipeline_when": (json.loads(PIPELINE_JSON.read_text())
                                                     ["when"] if pipe else "none"),
            "flat_records": accepted, "flat_rate": round(flat, 1),
            "paced_rate": round(len(paced) / took, 1),
            "trail": trail, "upstream": up, "own": mine, "warmup_s": args.warmup,
            "warmup_trail": warm,
            "paced_seconds": round(took, 1), "cpu_seconds": cpu, "batches": batch,
        }
        print(markdown(result), flush=True)
        if args.write:
            RESULTS_JSON.write_text(json.dumps(result, indent=2) + "\n")
            with RESULTS_MD.open("a") as f:
                f.write(markdown(result))
        print(f"logs in {workdir / 'logs'}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        client.close()
        for server in reversed(servers):
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
