"""Process entry point shared by the four services: settings, logs, metrics, signals.

A service is built by a function of its settings and adapters (nothing is
constructed at import time), then run until SIGTERM/SIGINT. A Fatal error (a
failed transaction, a determinism or invariant violation) exits with status 75 so
that a supervisor restarts it; the restart restores the table from the changelog.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from domain import InvariantViolation
from services.common.auth import Keyring
from services.common.logs import json_handler
from services.common.metrics import Metrics
from services.common.ops import start_ops_server
from services.common.runner import Fatal, Stage, StageRunner
from services.common.settings import Settings
from services.common.steps import DeterminismError

EXIT_RESTART = 75

StageFactory = Callable[[Settings, Keyring, Metrics], Stage]


def setup_logging(service: str, level: str) -> None:
    root = logging.getLogger()
    root.handlers[:] = [json_handler(service)]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.WARNING)


async def _serve(runner: StageRunner, metrics: Metrics, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ops = await start_ops_server(port, runner, metrics) if port else None
    try:
        await runner.run(stop)
    finally:
        if ops is not None:
            await ops.cleanup()


def run_service(name: str, factory: StageFactory) -> None:
    settings = Settings.from_env()
    setup_logging(name, settings.log_level)
    log = logging.getLogger(f"commission.{name}")
    metrics = Metrics(name)
    stage = factory(settings, Keyring.from_env(), metrics)
    runner = StageRunner(stage, settings, metrics)
    log.info(f"starting: group {runner.group}, input {stage.input_topic()}, "
             f"metrics port {settings.metrics_port or 'off'}")
    try:
        asyncio.run(_serve(runner, metrics, settings.metrics_port))
    except (Fatal, DeterminismError, InvariantViolation) as exc:
        log.critical(f"stopping for a restart: {exc}")
        sys.exit(EXIT_RESTART)
    log.info("stopped")
