"""The version of ollama-cloud, reported by each worker in its heartbeat."""

__version__ = "0.1.0"
