"""Deterministic fault injection at the named points of a runner's round (tests).

``COMMISSION_FAULTS="point@n[:action],..."``: the n-th time (1-based) the runner
reaches ``point``, do ``action``. The points, in the order of one round:

  after_fetch      records are fetched, nothing applied
  after_apply      every record applied to the in-memory table, nothing sent
  after_outputs    the outputs are sent (in the open transaction)
  after_changelog  the changed rows and the position are sent too
  after_offsets    the input offsets are added to the transaction
  during_commit    while commit_transaction is in flight (the action runs on a timer
                   thread a moment after the commit starts)
  after_commit     committed, before the next fetch

Actions: ``kill`` (default: SIGKILL this process); ``fence`` (another producer takes
this worker's transactional id, so this worker's next transaction call fails as a
zombie's would); ``join`` (another member joins the stage's group and leaves,
so the group moves to a new generation while the round runs); ``pause`` (create ``{COMMISSION_FAULT_DIR}/{point}.paused`` and wait
for ``{point}.resume``, at most PAUSE_MAX_S: the test restarts the broker meanwhile).

Empty in production; parsing a wrong spec stops the process at start.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

POINTS = ("after_fetch", "after_apply", "after_outputs", "after_changelog", "after_offsets",
          "during_commit", "after_commit")
ACTIONS = ("kill", "fence", "pause", "join")
PAUSE_MAX_S = 45.0  # a test that never resumes does not leave a worker stuck for ever


class Faults:
    def __init__(self, spec: str, fence: Callable[[], None] | None = None,
                 folder: str | None = None, join: Callable[[], None] | None = None) -> None:
        self.plan: dict[tuple[str, int], str] = {}
        for item in filter(None, (x.strip() for x in spec.split(","))):
            where, _, action = item.partition(":")
            point, _, nth = where.partition("@")
            action = action or "kill"
            if point not in POINTS or action not in ACTIONS or not nth.isdigit():
                raise SystemExit(f"COMMISSION_FAULTS: cannot read {item!r} (points {POINTS}, "
                                 f"actions {ACTIONS})")
            self.plan[(point, int(nth))] = action
        self.seen: Counter[str] = Counter()
        self.fence = fence
        self.join = join
        self.folder = Path(folder or os.environ.get("COMMISSION_FAULT_DIR", "."))

    def __bool__(self) -> bool:
        return bool(self.plan)

    def at(self, point: str) -> None:
        if not self.plan:
            return
        self.seen[point] += 1
        action = self.plan.get((point, self.seen[point]))
        if action is None:
            return
        if point == "during_commit":
            threading.Timer(0.002, self._do, (point, action)).start()
        else:
            self._do(point, action)

    def _do(self, point: str, action: str) -> None:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "fence":
            assert self.fence is not None
            self.fence()
        elif action == "join":
            assert self.join is not None
            self.join()
        else:
            (self.folder / f"{point}.paused").touch()
            resume = self.folder / f"{point}.resume"
            deadline = time.monotonic() + PAUSE_MAX_S
            while not resume.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
