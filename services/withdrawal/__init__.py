"""The withdrawal service: `python -m services.withdrawal`."""
