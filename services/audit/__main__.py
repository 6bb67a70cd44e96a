"""`python -m services.audit`: read the topics to their end and reconcile.

Exits 0 when every certificate reconciles, 1 on any discrepancy (each printed on
its own line), 2 when the topics cannot be read. Uses the same environment as the
services (KAFKA_BOOTSTRAP_SERVERS, COMMISSION_TOPIC_PREFIX).

    --results-within S     a settlement with no payment result (settled, or parked
                           after its last failed attempt) S seconds after it was
                           published is a discrepancy (default: only counted)
    --metrics-file F       also write the result for the node_exporter textfile collector
    --every S --port P     run every S seconds and serve the result on :P/metrics
                           (how deployments run it; alerts fire on its gauges)
    --duty F               with --every: run at most this fraction of the time (the
                           pause after a pass grows with the pass: each one re-reads
                           every topic, so its time grows with their history)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import msgspec
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry, Gauge, start_http_server, write_to_textfile

from schemas.commands import AcceptedCommand
from services.audit.read import read_cut, read_records, read_topic
from services.audit.report import Report, reconcile_all, torn_certificates
from services.common.auth import Keyring
from services.common.production import refuse_insecure
from services.common.settings import Settings


class AuditGauges:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.success = Gauge("commission_audit_success",
                             "1 if the last audit read the topics and found no discrepancy.",
                             registry=r)
        self.discrepancies = Gauge("commission_audit_discrepancies",
                                   "Discrepancies found by the last audit.", registry=r)
        self.certificates = Gauge("commission_audit_certificates",
                                  "Certificates reconciled by the last audit.", registry=r)
        self.awaiting = Gauge("commission_audit_settlements_awaiting_result",
                              "Settlements whose last attempt has no payment result yet.",
                              registry=r)
        self.oldest = Gauge("commission_audit_oldest_awaiting_result_seconds",
                            "Age of the oldest settlement with no payment result (0: none).",
                            registry=r)
        self.last_run = Gauge("commission_audit_last_run_timestamp_seconds",
                              "When the last audit finished.", registry=r)
        # before the first audit nothing is known: NaN, so neither "failed" (0) nor
        # "not run for hours" can fire while the first audit reads the topics
        for gauge in (self.success, self.discrepancies, self.last_run):
            gauge.set(float("nan"))

    def record(self, report: Report | None) -> None:
        self.success.set(int(report is not None and report.ok))
        if report is not None:
            self.discrepancies.set(len(report.problems))
            self.certificates.set(report.certificates)
            self.awaiting.set(report.awaiting_results)
            self.oldest.set(0 if report.oldest_awaiting_ms is None
                            else max(0.0, time.time() - report.oldest_awaiting_ms / 1000))
        self.last_run.set(time.time())


_decode_accepted = msgspec.json.Decoder(AcceptedCommand).decode


def stage_positions(settings: Settings, stage: str, topic: str,
                    timeout_s: float = 30.0) -> dict[int, int]:
    """A stage's committed offset in its input ``topic``, per partition: the records
    below it are applied and their outputs committed with it. Asked as the runner
    asks it (librdkafka, read_committed: require_stable, so an offset whose transaction
    is still open is waited for, never half-seen). The group is not joined."""
    reader = Consumer({"bootstrap.servers": settings.bootstrap,
                       "group.id": f"{settings.group_prefix}-{stage}",
                       "isolation.level": "read_committed", "enable.auto.commit": False,
                       "client.id": "commission-audit", **settings.kafka_auth.librdkafka()})
    try:
        meta = reader.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return {}
        committed = reader.committed([TopicPartition(topic, p) for p in meta.partitions],
                                     timeout=timeout_s)
        return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
    finally:
        reader.close()


def audit_once(timeout_s: float, results_within_s: float | None = None,
               settings: Settings | None = None) -> Report | None:
    """The report, or None when the topics could not be read (never a silent pass).
    Each topic is read as a cut (read_cut): a certificate with records beyond one is
    torn, not summed (report.py, torn_certificates)."""
    settings = settings or Settings.from_env()
    t = settings.topics
    auth = settings.kafka_auth
    try:
        # A running pipeline, read from the last hop back to the first, each hop's
        # position before its outputs: where netting stands in `settlements`, then
        # payments; where cash-out stands in `accepted`, then settlements; then what
        # caused them: the events, then `accepted` (written in one transaction with
        # the events, so it holds every command whose events were read, and more).
        # Everything read has its cause read too; a certificate with commands at or
        # beyond the cash-out's position is in flight, and its sums are not complete
        # yet; a settlement at or beyond netting's position may not be netted yet.
        netted = stage_positions(settings, "netting", t.settlements)
        payments = read_topic(settings.bootstrap, t.payments, timeout_s, auth)
        done = stage_positions(settings, "cashout", t.accepted)
        settlements_cut = read_cut(settings.bootstrap, t.settlements, timeout_s, auth)
        events_cut = read_cut(settings.bootstrap, t.certificate_events, timeout_s, auth)
        accepted = read_records(settings.bootstrap, t.accepted, timeout_s, auth)
    except Exception as exc:
        print(f"audit: cannot read the topics: {exc}", file=sys.stderr)
        return None
    settlements = settlements_cut.records
    events = [r.value for r in events_cut.records]
    torn = torn_certificates(settlements_cut.beyond, events_cut.beyond,
                             [r.value for r in settlements])
    in_flight = frozenset(
        _decode_accepted(r.value).command.certificate_id for r in accepted
        if r.offset >= done.get(r.partition, 0))
    report = reconcile_all(events, [r.value for r in accepted],
                           [(r.partition, r.offset, r.value) for r in settlements], payments,
                           netted=netted, now_ms=int(time.time() * 1000),
                           results_within_ms=None if results_within_s is None
                           else int(results_within_s * 1000), in_flight=in_flight,
                           torn=torn)
    for problem in report.problems:
        print(f"DISCREPANCY {problem}")
    verdict = "OK" if report.ok else "FAILED"
    print(f"audit {verdict}: {report.certificates} certificates, {report.settlements} "
          f"settlements ({report.awaiting_results} awaiting a payment result, "
          f"{report.in_flight} certificates in flight, {report.torn} of them torn), "
          f"{len(report.problems)} discrepancies", flush=True)
    return report


def pause_after(took_s: float, every_s: float, duty: float) -> float:
    """The pause after a pass that took ``took_s``: at least ``every_s``, and long
    enough that passes take at most ``duty`` of the time. `make run`'s audit at
    DEMO_RATE=1000 re-read ~10^5-10^6 records a pass: every 15 s, it ran without a
    pause and the broker's answers to it took the cores the pipeline needed (the read
    model's trail went past a second in 9-11 % of the seconds; without the audit in
    none, docs/benchmarks.md)."""
    if not 0 < duty <= 1:
        raise ValueError("duty is a fraction of the time, in (0, 1]")
    return max(every_s, took_s * (1 / duty - 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.audit")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds allowed to read each topic to its end")
    parser.add_argument("--results-within", type=float, default=None)
    parser.add_argument("--metrics-file", type=Path)
    parser.add_argument("--every", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--duty", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not 0 < args.duty <= 1:
        parser.error("--duty is a fraction of the time, in (0, 1]")
    refuse_insecure(Settings.from_env(), Keyring({}))  # it holds no keys
    gauges = AuditGauges()
    if args.port:
        start_http_server(args.port, addr=os.environ.get("OPS_BIND_HOST", "127.0.0.1"),
                          registry=gauges.registry)
    while True:
        started = time.monotonic()
        report = audit_once(args.timeout, args.results_within)
        gauges.record(report)
        if args.metrics_file:
            write_to_textfile(str(args.metrics_file), gauges.registry)
        if not args.every:
            return 2 if report is None else (0 if report.ok else 1)
        time.sleep(pause_after(time.monotonic() - started, args.every, args.duty))


if __name__ == "__main__":
    sys.exit(main())
