"""The fraud stage: flags suspicious acquisitions for review (issue #24, rule 3)."""
