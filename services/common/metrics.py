"""Prometheus metrics of one service, on its own registry, served over HTTP.

Names follow Prometheus conventions: ``_total`` for counters, ``_seconds`` for
durations; money is counted in the currency's minor unit (``_minor_units_total``),
labelled by currency, never mixed across currencies. Labels never carry ids of
certificates or accounts (unbounded cardinality) nor secrets.
"""

from __future__ import annotations

import bisect
import collections
import http.client

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from schemas.events import (
    CertificatePurchased,
    CommissionAcquired,
    Event,
    HoldReleased,
    PaymentReported,
    PoolReplenished,
    PoolWithdrawn,
)
from schemas.payments import (
    BudgetRelease,
    BuyerRefund,
    Clawback,
    CommissionPayout,
    SellerPayment,
    Settlement,
)
from schemas.rejections import Reason

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_in = Counter("commission_messages_in_total", "Messages consumed, by type.",
                                   ["service", "type"], registry=r)
        self.messages_out = Counter("commission_messages_out_total",
                                    "Messages published, by topic and type.",
                                    ["service", "topic", "type"], registry=r)
        self.rejections = Counter("commission_rejections_total", "Refused commands, by reason.",
                                  ["service", "reason"], registry=r)
        self.processing = Histogram("commission_processing_seconds",
                                    "Time to decode, decide and encode one message (the mean "
                                    "of each round, observed once per round).",
                                    ["service"], buckets=LATENCY_BUCKETS, registry=r)
        self.transaction = Histogram("commission_transaction_seconds",
                                     "Time of one batch's Kafka transaction, begin to commit.",
                                     ["service"], buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end = Histogram("commission_end_to_end_seconds",
                                    "From the command's broker timestamp to its last effect "
                                    "published by this service.",
                                    ["service"], buckets=LATENCY_BUCKETS, registry=r)
        self.lag = Gauge("commission_consumer_lag_messages",
                         "Messages in the input partition not yet consumed.",
                         ["service", "topic", "partition"], registry=r)
        self.table_rows = Gauge("commission_table_rows", "Certificates in the service's table.",
                                ["service"], registry=r)
        self.money = Counter("commission_money_minor_units_total",
                             "Money moved, in minor units of the currency, by flow.",
                             ["service", "flow", "currency"], registry=r)
        self.determinism_errors = Counter(
            "commission_determinism_errors_total",
            "Accepted commands this stage could not apply identically (a bug; nothing "
            "was published for them).", ["service"], registry=r)
        self.skipped = Counter("commission_records_skipped_total",
                               "Input records below the table's position (applied before), "
                               "skipped.", ["service"], registry=r)
        self.awaiting_results = Gauge(
            "commission_settlements_awaiting_result",
            "Settlements published whose last attempt has no result from the payment "
            "system yet (cash-out's table).", ["service"], registry=r)
        self.oldest_awaiting_result = Gauge(
            "commission_settlements_oldest_awaiting_result_seconds",
            "Age of the oldest settlement waiting for a payment result (0: none).",
            ["service"], registry=r)
        self.parked_payments = Gauge(
            "commission_settlements_parked",
            "Settlements that failed their last attempt and wait for an operator.",
            ["service"], registry=r)
        self.aborted_rounds = Counter("commission_rounds_aborted_total",
                                      "Rounds whose transaction was aborted (the group moved "
                                      "on while it ran) and whose partitions were restored "
                                      "from the changelog.", ["service"], registry=r)
        # the fraud stage's flags, by the rule that fired (services/fraud)
        self.fraud_flags = Counter("commission_fraud_flags_total",
                                   "Acquisitions the fraud stage flagged for review, by rule.",
                                   ["service", "rule"], registry=r)
        self.parked = Gauge("commission_partition_parked",
                            "1 while an input partition is parked: a record in it cannot be "
                            "applied (see the log); the other partitions keep running.",
                            ["service", "partition"], registry=r)
        self.restore_seconds = Histogram("commission_restore_seconds",
                                         "Time to restore the table of newly assigned "
                                         "partitions from the changelog.", ["service"],
                                         buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
                                         registry=r)
        # per seller: a seller declining most of its sharers' commissions keeps the
        # funder's money and the sharers' work (issue #24); one series per seller and
        # outcome, counted by the sequencer only
        self.seller_commissions = Counter(
            "commission_seller_commissions_total",
            "Commissions on each seller's certificates, by what happened to them: "
            "acquired, declined (by the seller or a reviewer), flagged (fraud stage), "
            "approved (reviewer).", ["service", "seller", "outcome"], registry=r)
        self.commit_blocked = Gauge(
            "commission_commit_blocked",
            "1 while the stage's transaction cannot complete and is being retried (too "
            "few in-sync replicas: NOT_ENOUGH_REPLICAS, no leader, no coordinator); "
            "nothing of the round is published meanwhile.", ["service"], registry=r)
        self.commit_retries = Counter(
            "commission_commit_retries_total",
            "Waits of a transaction step that timed out and was tried again (the round "
            "is retried, never skipped).", ["service"], registry=r)
        self.timer_commands = Counter("commission_timer_commands_total",
                                      "check_expiry and release_hold commands sent by the "
                                      "withdrawal timer.", ["service"], registry=r)
        # Series that exist from the start, at 0: a counter that has not moved yet
        # (no determinism error, no aborted round, no rejection of some reason) is a
        # 0 on the dashboards and in the alerts' expressions, not "No data".
        for counter in (self.determinism_errors, self.aborted_rounds, self.skipped,
                        self.timer_commands, self.commit_retries):
            counter.labels(service)
        if service == "fraud":
            from services.fraud.rules import RULES  # the stage's own rule names

            for rule in RULES:  # every rule's series from the start, at 0
                self.fraud_flags.labels(service, rule)
        self.commit_blocked.labels(service).set(0)
        if service == "circulation":
            for reason in Reason:
                self.rejections.labels(service, reason.value)

        # A stage counts while it applies a round's records, into plain lists (an
        # append is ~50 ns; a labelled Prometheus inc ~1.5 us, several per message),
        # one tally per input partition (see use); the runner publishes them once per
        # round after the round's transaction commits, drops a parked partition's and
        # all of an aborted round: the counters say what was published.
        self._tallies: dict[int | None, tuple[list, list, list, list, list]] = {}
        self._in: list[str]
        self._out: list[tuple[str, type]]
        self._money: list[tuple[str, str, int]]
        self._refused: list[str]
        self._sellers: list[tuple[str, str]]  # (seller, outcome)
        self.use(None)
        self._children: dict[tuple, Counter] = {}

    def use(self, partition: int | None) -> None:
        """Count into ``partition``'s tally from now on."""
        tally = self._tallies.get(partition)
        if tally is None:
            tally = self._tallies[partition] = ([], [], [], [], [])
        self._in, self._out, self._money, self._refused, self._sellers = tally

    def drop(self, partition: int | None = None) -> None:
        """Forget what was counted for ``partition`` since the last publish (a parked
        partition's part of the round); without one, all of it (an aborted round)."""
        for p, tally in self._tallies.items():
            if partition is None or p == partition:
                for counted in tally:
                    counted.clear()

    def count_in(self, kind: str) -> None:
        self._in.append(kind)

    def count_out(self, topic: str, items: list) -> None:
        self._out += [(topic, type(item)) for item in items]

    def count_seller(self, seller: str, outcome: str) -> None:
        self._sellers.append((seller, outcome))

    def count_rejection(self, reason: str) -> None:
        self._refused.append(reason)

    def count_flow(self, flow: str, currency: str, amount: int) -> None:
        self._money.append((flow, currency, amount))

    def count_money(self, items: list[Event | Settlement]) -> None:
        """Count the money flows of the published events and settlements."""
        flow = self._money.append
        for x in items:
            if isinstance(x, CommissionAcquired):
                flow(("acquired", x.currency, x.amount_minor))
            elif isinstance(x, PoolReplenished):
                flow(("replenished", x.currency, x.amount_minor))
            elif isinstance(x, PoolWithdrawn) and x.voided_minor:
                flow(("voided", x.currency, x.voided_minor))
            elif isinstance(x, (CommissionPayout, SellerPayment)) and x.reissue_of:
                # a payout a chargeback cancelled, sent again: counted once, as it was
                flow(("reissued", x.currency, x.amount_minor))
            elif isinstance(x, CommissionPayout):
                flow(("paid_out", x.currency, x.amount_minor))
            elif isinstance(x, BudgetRelease):
                flow(("released", x.currency, x.amount_minor))
            elif isinstance(x, SellerPayment):
                flow(("seller_paid", x.currency, x.amount_minor))
            elif isinstance(x, BuyerRefund):
                flow(("refunded", x.currency, x.amount_minor))
            elif isinstance(x, Clawback):
                flow(("clawed_back", x.currency, x.amount_minor))
            elif isinstance(x, CertificatePurchased) and x.held_until_ms is not None:
                # the commission and the price, held until the hold ends
                flow(("held", x.currency, x.held_minor + x.price_minor))
            elif isinstance(x, HoldReleased):
                flow(("hold_released", x.currency, x.paid_out_minor + x.seller_paid_minor))
            elif isinstance(x, PaymentReported) and x.outcome != "settled":
                # a failed attempt (retried), the last one (parked for an operator), or
                # a payout cancelled at a chargeback's request (sent again)
                flow(({"parked": "failed_parked", "cancelled": "cancelled"}.get(
                    x.outcome, "failed_retried"), x.currency, x.amount_minor))

    def _child(self, counter: Counter, *labels: str) -> Counter:
        # bound children by label values: labels() costs ~1.8 us a call
        key = (counter, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(self.service, *labels)
        return child

    def publish(self) -> None:
        """Add what the round counted to the counters: once per committed round."""
        kinds_in: collections.Counter = collections.Counter()
        kinds_out: collections.Counter = collections.Counter()
        refused: collections.Counter = collections.Counter()
        sums: dict[tuple[str, str], int] = {}
        sellers: collections.Counter = collections.Counter()
        for counted_in, counted_out, money, counted_refused, seller in self._tallies.values():
            sellers.update(seller)
            kinds_in.update(counted_in)
            kinds_out.update(counted_out)
            refused.update(counted_refused)
            for flow, currency, amount in money:
                sums[flow, currency] = sums.get((flow, currency), 0) + amount
        for kind, n in kinds_in.items():
            self._child(self.messages_in, kind).inc(n)
        for (topic, kind), n in kinds_out.items():
            self._child(self.messages_out, topic, kind.__name__).inc(n)
        for reason, n in refused.items():
            self._child(self.rejections, reason).inc(n)
        for (flow, currency), amount in sums.items():
            self._child(self.money, flow, currency).inc(amount)
        for (seller, outcome), n in sellers.items():
            self._child(self.seller_commissions, seller, outcome).inc(n)
        self.drop()


def observe_many(histogram, values: list[float]) -> None:
    """``histogram.observe(v) for v in values`` at the cost of one observation per
    bucket touched rather than per value (a stage observes every command's latency
    once per round). prometheus_client keeps a child's bucket counts per bucket, not
    cumulative (``_buckets``, with ``_upper_bounds`` ending in +Inf); a unit test
    compares the result with observe() one by one, so an upgrade that changes this
    fails there rather than here."""
    if not values:
        return
    bounds = histogram._upper_bounds
    counts = collections.Counter(bisect.bisect_left(bounds, v) for v in values)
    for i, n in counts.items():
        histogram._buckets[i].inc(n)
    histogram._sum.inc(sum(values))


class ReadModelMetrics:
    """The read model (services/readmodel): how far it trails the pipeline."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.commands = Counter("commission_readmodel_commands_total",
                                "Accepted commands consumed, by outcome: projected, or "
                                "skipped as projected already (a redelivery).",
                                ["outcome"], registry=r)
        self.rejections = Counter("commission_readmodel_rejections_total",
                                  "Refused commands recorded as outcomes.", registry=r)
        self.trail = Histogram("commission_readmodel_trail_seconds",
                               "From the accepted record's timestamp to its projection "
                               "committed in Redis.", buckets=LATENCY_BUCKETS, registry=r)


class ApiMetrics:
    """The HTTP API (services/api). ``route`` is the route's template, never a raw path."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("commission_api_requests_total",
                                "HTTP requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.duration = Histogram("commission_api_request_seconds",
                                  "Time to answer an HTTP request, by route.",
                                  ["route"], buckets=LATENCY_BUCKETS, registry=r)


def exposition(registry: CollectorRegistry) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a /metrics answer. The content type goes in the headers:
    it carries a charset, which aiohttp refuses as a ``content_type`` argument."""
    return generate_latest(registry), {"Content-Type": CONTENT_TYPE_LATEST}


def scrape(port: int, timeout_s: float = 2.0, host: str = "127.0.0.1") -> list[Sample]:
    """Every sample a service's /metrics serves (raises OSError when it does not answer).
    For the demo screen, the benchmark and the tests: one reader of the exposition."""
    # plain HTTP to a port number: no URL, so no scheme (file:, ftp:) can slip in
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        if answer.status != 200:
            raise OSError(f"{host}:{port}/metrics answered {answer.status}")
        text = answer.read().decode()
    finally:
        conn.close()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
