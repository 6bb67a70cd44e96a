"""The pipeline's services: thin adapters between Kafka and the domain core."""
