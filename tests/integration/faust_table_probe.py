"""A faust-streaming worker in its default at-least-once mode that does what the
issue's first sketch asked of a stage: a faust table keyed by certificate id keeps
the last sequence number applied, a record at or below it is skipped, and each new
record publishes one output. For test_faust_at_least_once.py; run as a subprocess.

    python -m tests.integration.faust_table_probe BOOTSTRAP SRC OUT GROUP DATADIR ORDER [STEP]

ORDER is ``send-first`` (publish, then write the table) or ``table-first``. Between
the two writes the agent spends STEP seconds (STEP_S unless given), standing for the
rest of a stage's work; it only widens a window that exists at any length, so that a
test can kill the worker inside it every time. The restarted worker, which is not
killed, runs with 0.
"""

import asyncio
import sys

import faust

# 8 s: the test must see the first write and SIGKILL the worker inside this window;
# at 4 s one CI run failed the way a kill landing in the second record's window
# would make it fail (no output at all after the restart); the test now checks the
# window itself right after the kill
STEP_S = 8.0


def main() -> None:
    bootstrap, src, out, group, datadir, order = sys.argv[1:7]
    step_s = float(sys.argv[7]) if len(sys.argv) > 7 else STEP_S
    app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://",
                    web_enabled=False, topic_partitions=1, datadir=datadir,
                    consumer_auto_offset_reset="earliest",
                    processing_guarantee="at_least_once",
                    table_standby_replicas=0,
                    broker_session_timeout=6.0, broker_heartbeat_interval=2.0)
    source = app.topic(src, key_type=str, value_type=str, key_serializer="raw",
                       value_serializer="raw")
    sink = app.topic(out, key_type=str, value_type=str, key_serializer="raw",
                     value_serializer="raw")
    applied = app.Table("applied", default=int, partitions=1, key_type=str,
                        value_type=int)

    @app.agent(source, concurrency=1)
    async def stage(stream):
        async for event in stream.events():
            certificate, seq = event.key, int(event.value.split(":")[1])
            if applied[certificate] >= seq:
                continue  # the dedupe the issue asked for
            if order == "send-first":
                await sink.send(key=certificate, value=event.value)
                await asyncio.sleep(step_s)
                applied[certificate] = seq
            else:
                applied[certificate] = seq
                await asyncio.sleep(step_s)
                await sink.send(key=certificate, value=event.value)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
