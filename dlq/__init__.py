"""The dead-letter queue: stuck saga work, its retry worker, Slack alerts and the CLI."""
