"""Independent reconciliation of the topics: `python -m services.audit`."""
