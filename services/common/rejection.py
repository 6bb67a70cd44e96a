"""A refused input record as a rejection: what every stage that reads raw input (the
sequencer, the captures stage) publishes on ``rejections``, with where it came from,
at most MAX_ORIGINAL_BYTES of it and the digest of the whole."""

from __future__ import annotations

import hashlib

import msgspec
from confluent_kafka import Message

from schemas.commands import Command
from schemas.rejections import MAX_ORIGINAL_BYTES, Reason, Rejection
from services.common.auth import header_dict
from services.common.follower import StepResult


class Source(msgspec.Struct, frozen=True):
    """Where a message came from: goes into every rejection."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    headers: dict[str, bytes] = msgspec.field(default_factory=dict)

    @classmethod
    def of(cls, record: Message) -> Source:
        return cls(record.topic(), record.partition(), record.offset(),
                   record.timestamp()[1], record.key(), header_dict(record.headers()))


def reject(raw: bytes, source: Source, reason: Reason, detail: str,
           command: Command | None = None) -> StepResult:
    certificate_id = command.certificate_id if command is not None else (
        source.key.decode("utf-8", "replace") if source.key else None)
    return StepResult(rejection=Rejection(
        reason=reason, detail=detail,
        command_id=command.command_id if command is not None else None,
        certificate_id=certificate_id, source_topic=source.topic,
        source_partition=source.partition, source_offset=source.offset,
        original=raw[:MAX_ORIGINAL_BYTES], original_size=len(raw),
        original_sha256=hashlib.sha256(raw).hexdigest(), at_ms=source.timestamp_ms,
    ))
