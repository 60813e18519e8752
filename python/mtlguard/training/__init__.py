"""mtlguard.training."""
