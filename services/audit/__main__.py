"""`python -m services.audit`: read the topics to their end and reconcile.

Exits 0 when every certificate reconciles, 1 on any discrepancy (each printed on
its own line), 2 when the topics cannot be read. Uses the same environment as the
services (KAFKA_BOOTSTRAP_SERVERS, COMMISSION_TOPIC_PREFIX).
"""

from __future__ import annotations

import argparse
import sys

from services.audit.read import read_topic
from services.audit.report import reconcile
from services.common.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.audit")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds allowed to read each topic to its end")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    t = settings.topics
    try:
        events = read_topic(settings.bootstrap, t.certificate_events, args.timeout)
        accepted = read_topic(settings.bootstrap, t.accepted, args.timeout)
        payments = read_topic(settings.bootstrap, t.payments, args.timeout)
    except Exception as exc:  # the audit must say it could not look, not pass
        print(f"audit: cannot read the topics: {exc}", file=sys.stderr)
        return 2
    report = reconcile(events, accepted, payments)
    for problem in report.problems:
        print(f"DISCREPANCY {problem}")
    verdict = "OK" if report.ok else "FAILED"
    print(f"audit {verdict}: {report.certificates} certificates, {report.settlements} "
          f"settlements, {len(report.problems)} discrepancies")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
