"""The netting service: recovers clawbacks from the account's later payouts."""
