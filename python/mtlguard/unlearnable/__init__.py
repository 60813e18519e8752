"""mtlguard.unlearnable."""
