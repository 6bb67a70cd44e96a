"""Starting Redis on a kept run folder: it replays its AOF first and answers every
command with -LOADING meanwhile, for longer than a start may take (23 s seen on a
folder a few `make run`s at DEMO_RATE=1000 had filled; `make run` gave up at 20 s).
The wait tolerates a replay as long as the server says it is loading, and still gives
up on one that does not answer, or that exits. A fake server stands in for Redis."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from deploy import localstack


class FakeRedis(threading.Thread):
    """Answers PING with -LOADING until ``loading_s`` has passed, then +PONG."""

    def __init__(self, loading_s: float) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.ready_at = time.monotonic() + loading_s
        self.answers: list[bytes] = []

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                answer = (b"+PONG\r\n" if time.monotonic() >= self.ready_at else
                          b"-LOADING Redis is loading the dataset in memory\r\n")
                self.answers.append(answer[:5])
                conn.sendall(answer)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def short_start(monkeypatch):
    monkeypatch.setattr(localstack, "REDIS_START_TIMEOUT_S", 0.5)
    monkeypatch.setattr(localstack, "REDIS_LOAD_TIMEOUT_S", 5.0)


def test_a_replay_longer_than_the_start_timeout_is_waited_for(short_start):
    fake = FakeRedis(loading_s=1.5)
    fake.start()
    try:
        began = time.monotonic()
        localstack.wait_for_redis(fake.port, pid=None, log=None)
        waited = time.monotonic() - began
    finally:
        fake.close()
    assert waited >= 1.4  # it did not return while Redis was still loading
    assert b"-LOAD" in fake.answers and fake.answers[-1] == b"+PONG"


def test_a_replay_longer_than_the_load_timeout_fails_naming_it(short_start, monkeypatch):
    monkeypatch.setattr(localstack, "REDIS_LOAD_TIMEOUT_S", 0.6)
    fake = FakeRedis(loading_s=30)
    fake.start()
    try:
        with pytest.raises(RuntimeError, match="loading its data"):
            localstack.wait_for_redis(fake.port, pid=None, log=None)
    finally:
        fake.close()


def test_nothing_answering_fails_after_the_start_timeout(short_start):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="did not answer within"):
        localstack.wait_for_redis(port, pid=None, log=None)
    assert time.monotonic() - began < 3
