"""The live audit's pause: at least --every, and long enough that its passes (each a
re-read of every topic) take at most --duty of the time."""

from __future__ import annotations

import pytest

from services.audit.__main__ import main, pause_after


def test_a_quick_pass_waits_the_interval_and_a_long_one_waits_in_proportion():
    assert pause_after(1.0, 15, 0.2) == 15  # 1 s of 16: within a fifth
    assert pause_after(10.0, 15, 0.2) == pytest.approx(40)  # 10 s of 50
    for took in (0.5, 3.75, 12.0, 90.0):
        pause = pause_after(took, 15, 0.2)
        assert pause >= 15 and took / (took + pause) <= 0.2 + 1e-12
    assert pause_after(100.0, 15, 1.0) == 15  # the default: the interval alone


@pytest.mark.parametrize("duty", [0.0, -0.5, 1.5])
def test_a_duty_that_is_no_fraction_is_refused(duty):
    with pytest.raises(ValueError):
        pause_after(1.0, 15, duty)
    with pytest.raises(SystemExit):
        main(["--every", "15", "--duty", str(duty)])
