"""The allocation service: `python -m services.allocation`."""
