"""make run's live summary fits one 80 x 24 terminal, redrawn in place by rich."""

from __future__ import annotations

import io
import time
from collections import Counter

import pytest
from rich.console import Console
from rich.live import Live

from services.demo import __main__ as demo

pytestmark = pytest.mark.unit


class Busy:
    """What the summary reads, as in a demo that has run a while."""

    sent, offers, live = 51_234, 812, list(range(40))
    settlements = Counter({"BudgetRelease": 700, "BuyerRefund": 40, "Clawback": 90,
                           "CommissionPayout": 2_300, "SellerPayment": 600})
    money = {(k, cur): 123_456_789 for k in settlements for cur in ("EUR", "USD")}
    results = Counter({"settled": 3_100, "failed": 340})
    rejections = Counter({f"reason_{i}": 100 - i for i in range(12)})
    restarts = Counter({"cashout": 1})

    def lag(self, name: str) -> int:
        return 12

    def trail(self) -> str:
        return "trail p50 <= 100 ms, p99 <= 250 ms (4012 projections); 0 records behind"


def test_the_summary_fits_80_by_24_and_redraws_in_place():
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, force_terminal=True, color_system=None)
    busy = Busy()
    with Live(console=console, auto_refresh=False) as live:
        for _ in range(3):
            demo.draw(live, time.monotonic() - 100, busy, busy, busy, 100.0,
                      "OK: 240 certificates, 4,000 settlements, 0 discrepancies")
    frames = out.getvalue()
    # redrawn in place: three frames, the cursor moved back up over the previous one
    assert frames.count("commission engine demo") >= 3  # and once more when it stops
    assert "\x1b[1A" in frames or "\x1b[2K" in frames, repr(frames[:300])
    rendered = io.StringIO()
    Console(file=rendered, width=80, color_system=None).print(live.renderable)
    lines = rendered.getvalue().splitlines()
    assert len(lines) <= 24 and max(map(len, lines)) <= 80, "\n".join(lines)
    assert any("payment system" in line for line in lines)
    assert any("read model" in line and "p99 <= 250 ms" in line for line in lines)


def test_without_a_terminal_it_prints_one_plain_line():
    busy = Busy()
    out = io.StringIO()
    real, demo.sys.stdout = demo.sys.stdout, out
    try:
        demo.draw(None, time.monotonic() - 100, busy, busy, busy, 100.0, "OK")
    finally:
        demo.sys.stdout = real
    [line] = out.getvalue().splitlines()
    assert line.startswith("commands 51234 sent") and line.endswith("audit OK")
    assert "\x1b" not in line
