"""The read model's progress (services/readmodel/progress.py): a rebuild says how many
records it projected, at what rate, how many are left and the time left, in its log,
its gauges and what it publishes for the pages; and when it is done."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from services.readmodel.progress import Progress


def gauge(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name)


def test_a_rebuild_reports_records_rate_and_time_left_then_its_end(caplog, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("services.readmodel.progress.time.monotonic", lambda: clock[0])
    registry = CollectorRegistry()
    progress = Progress(registry, every_s=5.0)
    caplog.set_level(logging.INFO, logger="commission.readmodel")
    progress.rebuild(8)
    assert "rebuilding: no position in Redis for 8 partitions" in caplog.text
    assert gauge(registry, "commission_readmodel_rebuilding") == 1
    assert progress.tick(0, known=False)["state"] == "rebuilding"  # said at once
    progress.projected(4_000)
    clock[0] += 2
    assert progress.tick(36_000) is None  # not yet time to say
    assert progress.tick(0, known=False) is None  # an end not fetched yet: not done
    assert gauge(registry, "commission_readmodel_rebuilding") == 1
    progress.projected(6_000)
    clock[0] += 3
    update = progress.tick(30_000)
    assert update["state"] == "rebuilding" and update["behind"] == "30000"
    assert update["rate_per_s"] == "2000" and update["left_s"] == "15.0"
    assert "rebuilding: 10000 records projected, 2000/s, 30000 left, 15 s left" in caplog.text
    assert gauge(registry, "commission_readmodel_behind_records") == 30_000
    assert gauge(registry, "commission_readmodel_catch_up_seconds") == 15.0
    progress.projected(30_000)
    clock[0] += 10
    update = progress.tick(0)
    assert "rebuilt: 40000 records in 15.0 s" in caplog.text
    assert update["state"] == "live"
    assert gauge(registry, "commission_readmodel_rebuilding") == 0
    assert gauge(registry, "commission_readmodel_catch_up_seconds") == 0
