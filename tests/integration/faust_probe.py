"""A minimal faust-streaming worker for the smoke test: appends every value it
consumes from TOPIC to OUT, one per line. Run as a subprocess, as services are.

    python -m tests.integration.faust_probe BOOTSTRAP TOPIC GROUP OUT
"""

import os
import sys

import faust


def main() -> None:
    bootstrap, topic, group, out = sys.argv[1:5]
    app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://",
                    web_enabled=False, topic_partitions=4, consumer_auto_offset_reset="earliest",
                    # next to OUT (a test's tmp_path), not in the working directory
                    datadir=os.path.join(os.path.dirname(os.path.abspath(out)), "faust-data"))
    source = app.topic(topic, value_type=bytes, value_serializer="raw")

    @app.agent(source)
    async def collect(stream):
        async for value in stream:
            with open(out, "ab") as f:
                f.write(value + b"\n")

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
