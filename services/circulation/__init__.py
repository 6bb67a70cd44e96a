"""The circulation service: `python -m services.circulation`."""
