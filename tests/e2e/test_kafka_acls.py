"""The pipeline under the broker's ACLs from deploy/acls.py: each process logs in as
its own user and has exactly the grants of the access table. It runs (outputs equal
the core's, read model caught up, the audit passes as the audit user), and a process
cannot write a topic that is not its own: the HMAC protects `commands`, the ACLs
protect `accepted` and `payments`."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError

from deploy.acls import apply
from deploy.localstack import local_password
from services.common.settings import KafkaAuth
from tests.e2e.pipeline import ROOT, SERVICES, Pipeline
from tests.e2e.test_kafka_auth import send_and_check


def login(user: str, password: str) -> KafkaAuth:
    return KafkaAuth(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                     username=user, password=password)


def as_user(user: str) -> dict[str, str]:
    return {"KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD": local_password(user)}


def test_each_process_runs_with_its_own_grants_and_no_more(stack, names, tmp_path):
    listener = stack.login_listener("SASL_PLAINTEXT")
    if listener is None:
        pytest.skip(f"Kafka comes from {stack.source}; this session cannot add users and ACLs")
    bootstrap, operator = listener  # a super user: creates the topics, applies the ACLs
    pipeline = Pipeline(bootstrap, names.prefix, tmp_path / "logs",
                        extra_env={"REDIS_URL": stack.redis_url}, kafka_auth=operator)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **operator.kafka_python())
    try:
        apply(admin, pipeline.settings)
        for service in SERVICES:
            pipeline.start(service, **as_user(service))
        pipeline.start("readmodel", **as_user("readmodel"))
        want = send_and_check(pipeline, stack.redis_url, seed=59)
        t = pipeline.topics
        audit = subprocess.run([sys.executable, "-m", "services.audit", "--timeout", "60"],
                               cwd=ROOT, env={**pipeline.env, **as_user("audit")},
                               capture_output=True, text=True, timeout=120)
        assert audit.returncode == 0 and "audit OK" in audit.stdout, audit.stdout + audit.stderr
        pipeline.assert_running()

        # and no more: a forged verdict or settlement from another process's login
        for user, topic in (("allocation", t.payments), ("api", t.accepted),
                            ("cashout", t.accepted), ("cashout", t.payments),
                            ("netting", t.settlements), ("readmodel", t.payments),
                            # the payment system speaks only through the captures stage,
                            # which admits each payment reference once
                            ("payment-system", t.commands)):
            producer = KafkaProducer(bootstrap_servers=bootstrap, max_block_ms=15_000,
                                     **login(user, local_password(user)).kafka_python())
            try:
                with pytest.raises(KafkaError, match="TopicAuthorizationFailed"):
                    producer.send(topic, key=b"c", value=b"forged").get(timeout=15)
            finally:
                producer.close(timeout=5)
        assert Counter(pipeline.read(t.settlements)) == want.topics["settlements"]
        # ... and what it may say, it says on payment-results
        producer = KafkaProducer(bootstrap_servers=bootstrap, max_block_ms=15_000,
                                 **login("payment-system",
                                         local_password("payment-system")).kafka_python())
        try:
            producer.send(t.payment_results, key=b"c", value=b"{}").get(timeout=15)
        finally:
            producer.close(timeout=5)
    finally:
        admin.close()
        pipeline.stop_all()
        pipeline.sender.close()
