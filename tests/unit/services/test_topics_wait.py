"""A service starting while no broker answers waits for one instead of exiting
(services/common/topics.py ensure_topics). The check itself runs against real brokers
in every integration and e2e test; here only what is retried, with the check replaced
by one that fails as kafka-python does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, TopicAuthorizationFailedError

from services.common import topics
from services.common.settings import Settings


class Failing:
    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    def __call__(self, settings, names, compacted) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def clock(monkeypatch, step_s: float = 0.0) -> None:
    """The module's own clock (not the process's ``time``): a waiting that takes no
    time, and a monotonic time that moves ``step_s`` a reading."""
    now = iter(range(0, 1_000_000, int(step_s) or 1))
    monkeypatch.setattr(topics, "time", SimpleNamespace(sleep=lambda s: None,
                                                        monotonic=lambda: next(now)))


@pytest.fixture
def no_sleep(monkeypatch):
    clock(monkeypatch)


def test_a_broker_lost_or_not_there_yet_is_tried_again(monkeypatch, no_sleep):
    # a broker just killed, still in the metadata the admin client picked; then none
    # to bootstrap from while the cluster restarts
    check = Failing([KafkaConnectionError("socket disconnected"),
                     KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9092")])
    monkeypatch.setattr(topics, "_ensure_topics", check)
    topics.ensure_topics(Settings.from_env(), ["t"])
    assert check.calls == 3


def test_a_refusal_is_not_waited_on(monkeypatch, no_sleep):
    check = Failing([TopicAuthorizationFailedError("not allowed")])
    monkeypatch.setattr(topics, "_ensure_topics", check)
    with pytest.raises(TopicAuthorizationFailedError):
        topics.ensure_topics(Settings.from_env(), ["t"])
    assert check.calls == 1


def test_it_gives_up_after_its_wait(monkeypatch):
    clock(monkeypatch, step_s=10)  # each attempt 10 s later
    check = Failing([KafkaConnectionError("refused")] * 100)
    monkeypatch.setattr(topics, "_ensure_topics", check)
    with pytest.raises(KafkaConnectionError):
        topics.ensure_topics(Settings.from_env(), ["t"], wait_s=60)
    assert check.calls == 7  # at 0 (deadline 60), 10, ..., 60: given up once past it
