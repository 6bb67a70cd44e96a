"""Read API over the Redis read model (`python -m services.api`)."""
