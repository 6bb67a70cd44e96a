"""The cashout service: `python -m services.cashout`."""
