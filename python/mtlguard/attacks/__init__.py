"""mtlguard.attacks."""
