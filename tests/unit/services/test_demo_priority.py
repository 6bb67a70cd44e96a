"""`make run` starts each service in a session of its own; where the kernel schedules
sessions as groups (autogroup), a process's own nice value weighs only inside its
group, so the audit's `nice -n 10` did nothing against the pipeline (it took 10-23 %
of a core at DEMO_RATE=1000). The demo sets the group's nice value as well."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.demo.__main__ import AUDIT_NICE, yield_cores

pytestmark = pytest.mark.unit


def test_a_process_in_its_own_session_yields_the_cores():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             start_new_session=True)
    try:
        yield_cores(child.pid, AUDIT_NICE)
        group = Path(f"/proc/{child.pid}/autogroup")
        if Path("/proc/self/autogroup").exists():  # Debian's kernels: on by default
            assert group.read_text().split()[-1] == str(AUDIT_NICE)
            # and only its own group: the test's is untouched
            assert Path("/proc/self/autogroup").read_text() != group.read_text()
        else:  # without autogroup there is nothing to set, and nothing fails
            assert not group.exists()
    finally:
        child.kill()
        child.wait()
