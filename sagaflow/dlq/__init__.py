"""The dead-letter queue: parked saga work, its retry worker, alerts and the CLI."""
