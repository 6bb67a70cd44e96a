"""The pipeline's services: thin adapters between Kafka and the domain core."""

# Every service refuses to run optimised: `python -O` strips `assert` statements, and
# some of them guard money (domain/, the stages' invariants). Every entry point,
# `python -m services.<name>`, imports this package first, so none runs without them
# (tests/unit/services/test_optimised.py; the bandit allowlist cites this for B101).
if not __debug__:
    raise SystemExit("the commission engine's services refuse to run with python -O: "
                     "it strips the assert statements that guard money")
