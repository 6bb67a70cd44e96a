"""Process entry point shared by the four services: settings, logs, metrics, signals.

A service is built by a function of its settings and adapters (nothing is
constructed at import time), then run until SIGTERM/SIGINT. A Fatal error (a
failed transaction, a table that cannot be restored) exits with status 75 so that a
supervisor restarts it; the restart restores the table from the changelog.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading

from services.common import gctune
from services.common.logs import json_handler
from services.common.metrics import Metrics
from services.common.ops import start_ops_server
from services.common.production import refuse_insecure
from services.common.runner import Fatal, StageRunner
from services.common.settings import Settings
from services.common.stage import StageFactory
from services.common.stagekeys import stage_keys

EXIT_RESTART = 75


def setup_logging(service: str, level: str) -> None:
    root = logging.getLogger()
    root.handlers[:] = [json_handler(service)]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.WARNING)


def run_service(name: str, factory: StageFactory) -> None:
    # SIGUSR1 writes every thread's stack to stderr (the log): what a stuck worker does
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    gctune.tune()  # services/common/gctune.py
    settings = Settings.from_env()
    setup_logging(name, settings.log_level)
    log = logging.getLogger(f"commission.{name}")
    metrics = Metrics(name)
    keyring = stage_keys(name).for_engine()
    refuse_insecure(settings, keyring)
    stage = factory(settings, keyring, metrics)
    runner = StageRunner(stage, settings, metrics)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ops = start_ops_server(settings.metrics_port, runner, metrics) if settings.metrics_port else None
    log.info(f"starting: group {runner.group}, transactional id {runner.transactional_id}, "
             f"input {stage.input_topic()}, metrics port {settings.metrics_port or 'off'}")
    try:
        runner.run(stop)
    except Fatal as exc:
        log.critical(f"stopping for a restart: {exc}")
        sys.exit(EXIT_RESTART)
    finally:
        if ops is not None:
            ops.shutdown()
    log.info("stopped")
