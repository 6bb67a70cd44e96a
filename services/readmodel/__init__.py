"""The read model: Redis projections for the catalogue, certificate pages, feeds and
earnings (`python -m services.readmodel`)."""
