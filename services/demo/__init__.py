"""`make run`: the whole system on one machine, with a live summary."""
