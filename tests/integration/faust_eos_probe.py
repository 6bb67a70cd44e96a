"""A faust-streaming worker in its exactly-once mode that copies SRC to OUT (a topic
it does not consume, like `payments` for the cash-out stage). For
test_faust_exactly_once.py; run as a subprocess, as services are.

    python -m tests.integration.faust_eos_probe BOOTSTRAP SRC OUT GROUP DATADIR
"""

import sys

import faust


def main() -> None:
    bootstrap, src, out, group, datadir = sys.argv[1:6]
    app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://",
                    web_enabled=False, topic_partitions=1, datadir=datadir,
                    consumer_auto_offset_reset="earliest",
                    processing_guarantee="exactly_once",
                    # no periodic commit during the test: what readers see before
                    # it is what the transaction (if any) did not hold back
                    broker_commit_interval=120.0,
                    # the restarted worker waits for the killed one to time out
                    broker_session_timeout=6.0, broker_heartbeat_interval=2.0)
    source = app.topic(src, value_type=bytes, value_serializer="raw")
    sink = app.topic(out, value_type=bytes, value_serializer="raw")

    @app.agent(source)
    async def copy(stream):
        async for value in stream:
            await sink.send(value=value)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
