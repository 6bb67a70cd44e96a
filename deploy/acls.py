"""The Kafka ACLs of each process: what it may write, read, and which consumer group
and transactional ids it uses. One table, used three ways: `python -m deploy.acls`
prints it as `kafka-acls.sh` commands for an operator, `apply()` creates it with an
admin client, and tests/e2e/test_kafka_acls.py runs the pipeline under it (and checks
that a stage cannot write another stage's topic).

Why it matters: the HMAC on a command authenticates its author, but the stages trust
``accepted`` as the sequencer's verdict and payment systems trust ``payments``; only
the broker can stop another process from writing them.

    python -m deploy.acls [--topic-prefix P] [--group-prefix G] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourceType,
)

from schemas.topics import Topics

STAGES = ("captures", "circulation", "allocation", "withdrawal", "cashout", "netting", "fraud")


@dataclass(frozen=True)
class Names:
    """What the grants are named after: the topic prefix and the group prefix (a
    service's Settings has both; deploy/ does not import services/)."""

    topics: Topics
    group_prefix: str = "commission"


@dataclass(frozen=True)
class Grant:
    operation: ACLOperation
    resource: ResourceType
    name: str
    prefixed: bool = False


def changelog(topics: Topics, group_prefix: str, stage: str) -> str:
    # the runner's name for a stage's table changelog (services/common/runner.py)
    return f"{topics.prefix}{group_prefix}-{stage}-state-changelog"


def grants(settings: Names) -> dict[str, list[Grant]]:
    """Each process's grants; its Kafka user is the process's name."""
    t, g = settings.topics, settings.group_prefix
    T, G, X = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
    R, W, C, D = ACLOperation.READ, ACLOperation.WRITE, ACLOperation.CREATE, ACLOperation.DESCRIBE
    outputs = {"captures": [t.commands, t.rejections],
               "circulation": [t.accepted, t.certificate_events, t.rejections],
               "allocation": [t.allocations, t.fraud_feed],
               "withdrawal": [t.withdrawals, t.commands],
               "cashout": [t.settlements], "netting": [t.payments],
               # the fraud stage's only output: flag_commission, to the certificates
               "fraud": [t.commands]}
    sources = {"captures": t.payment_results, "circulation": t.commands,
               "netting": t.settlements, "fraud": t.fraud_feed}
    out: dict[str, list[Grant]] = {}
    for stage in STAGES:
        source = sources.get(stage, t.accepted)
        table = changelog(t, g, stage)
        out[stage] = [
            Grant(R, T, source), Grant(R, G, f"{g}-{stage}"),
            *(Grant(op, T, topic) for topic in outputs[stage] for op in (W, C)),
            *(Grant(op, T, table) for op in (R, W, C)),
            # the producers' transactional ids: {group}-{partition}
            *(Grant(op, X, f"{g}-{stage}-", prefixed=True) for op in (W, D)),
            # the input topic is created by whichever stage starts first
            Grant(C, T, source),
        ]
    # the input topics' rules (the broker's time, the size bound): checked (and set)
    # at start by the stages that read or write them
    configs = (ACLOperation.DESCRIBE_CONFIGS, ACLOperation.ALTER_CONFIGS)
    out["circulation"] += [Grant(op, T, t.commands) for op in configs]
    out["captures"] += [Grant(op, T, topic) for op in configs
                        for topic in (t.commands, t.payment_results)]
    readmodel = f"{g}-readmodel"  # faust's app id; a rebuild uses another suffix
    out["readmodel"] = [
        Grant(R, T, t.accepted), Grant(R, T, t.rejections),
        Grant(R, T, t.payments),  # the payouts' gross, offset and net, for earnings
        Grant(R, G, readmodel, prefixed=True),
        # faust's own topics ({app id}-__assignor-__leader)
        *(Grant(op, T, readmodel, prefixed=True) for op in (R, W, C, D)),
    ]
    out["api"] = [Grant(W, T, t.commands), Grant(D, T, t.commands)]
    # the payment system says everything (escrow holds, captured purchases, its
    # refunds, results; signed with its Ed25519 key) on payment-results and reads
    # payments. It may not write commands: a capture reaches them only through the
    # captures stage, which admits each payment reference once per seller.
    out["payment-system"] = [Grant(W, T, t.payment_results), Grant(D, T, t.payment_results),
                             Grant(R, T, t.payments), Grant(R, T, t.rejections)]
    out["audit"] = [Grant(R, T, topic) for topic in (t.accepted, t.certificate_events,
                                                      t.settlements, t.payments)]
    # where cash-out stands in accepted: what is complete and what is in flight
    out["audit"] += [Grant(D, G, f"{g}-cashout"), Grant(D, G, f"{g}-netting")]
    return out


def bindings(settings: Names) -> list[ACL]:
    return [
        ACL(principal=f"User:{user}", host="*", operation=grant.operation,
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                grant.resource, grant.name,
                ACLResourcePatternType.PREFIXED if grant.prefixed else ACLResourcePatternType.LITERAL))
        for user, user_grants in grants(settings).items() for grant in user_grants
    ]


def apply(admin, settings: Names) -> None:
    """Create every binding (idempotent); raise if the broker refuses one."""
    result = admin.create_acls(bindings(settings))
    if result["failed"]:
        raise RuntimeError(f"ACLs refused: {result['failed']}")


# kafka-acls.sh's spelling of each operation the table uses
_CLI_OPERATION = {ACLOperation.READ: "Read", ACLOperation.WRITE: "Write",
                  ACLOperation.CREATE: "Create", ACLOperation.DESCRIBE: "Describe",
                  ACLOperation.DESCRIBE_CONFIGS: "DescribeConfigs",
                  ACLOperation.ALTER_CONFIGS: "AlterConfigs"}


def commands(settings: Names, bootstrap: str) -> list[str]:
    lines = []
    for user, user_grants in grants(settings).items():
        for grant in user_grants:
            kind = {ResourceType.TOPIC: "--topic", ResourceType.GROUP: "--group",
                    ResourceType.TRANSACTIONAL_ID: "--transactional-id"}[grant.resource]
            pattern = " --resource-pattern-type prefixed" if grant.prefixed else ""
            operation = _CLI_OPERATION[grant.operation]
            lines.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --add "
                         f"--allow-principal User:{user} --operation {operation} "
                         f"{kind} '{grant.name}'{pattern}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.acls")
    parser.add_argument("--topic-prefix", default="")
    parser.add_argument("--group-prefix", default="commission")
    parser.add_argument("--bootstrap", default="kafka:9092")
    args = parser.parse_args(argv)
    settings = Names(topics=Topics(prefix=args.topic_prefix), group_prefix=args.group_prefix)
    print("\n".join(commands(settings, args.bootstrap)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
