"""mtlguard.weighting."""
