"""mtlguard.engine: the high-throughput bulk-protection engine behind ``mtlguard-engine``."""
