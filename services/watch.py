"""Print a topic's records as they are committed, one JSON line each.

    python -m services.watch payments          # or: make watch TOPIC=payments
    python -m services.watch rejections --from-beginning
"""

from __future__ import annotations

import argparse
import sys

from kafka import KafkaConsumer, TopicPartition

from services.common.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.watch")
    parser.add_argument("topic", help="payments, rejections, certificate-events, ...")
    parser.add_argument("--from-beginning", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    topic = settings.topics.name(args.topic)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None,
                             isolation_level="read_committed", enable_auto_commit=False,
                             **settings.kafka_auth.kafka_python())
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    if not tps:
        print(f"no topic {topic}", file=sys.stderr)
        return 1
    consumer.assign(tps)
    (consumer.seek_to_beginning if args.from_beginning else consumer.seek_to_end)(*tps)
    try:
        while True:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    sys.stdout.write(r.value.decode() + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    finally:
        consumer.close()


if __name__ == "__main__":
    sys.exit(main())
