"""mtlguard.metrics."""
