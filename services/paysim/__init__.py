"""The demo's payment system: checkouts, a simulated card form, captures (app.py)."""
