"""The cyclic garbage collector, tuned for processes that keep large tables in memory.

A stage allocates several container objects per command (states, events, outputs)
that die young and form no cycles, while its table keeps hundreds of thousands of
long-lived ones: with the default thresholds (700, 10, 10) the cyclic collector ran
thousands of times a second and walked the table on every older pass (~3 % of a
follower's CPU in `perf`, 13 % of the sequencer's Python path offline). The read
model's cache of certificate states (up to 100,000) is the same kind of table: each
full collection walked it while records waited (issue #25, docs/benchmarks.md).
"""

from __future__ import annotations

import gc

THRESHOLDS = (100_000, 50, 100)


def tune() -> None:
    """Fewer collections, and never of what exists now (the imports): call it first."""
    gc.set_threshold(*THRESHOLDS)
    gc.freeze()
