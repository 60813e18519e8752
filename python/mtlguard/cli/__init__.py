"""mtlguard.cli."""
