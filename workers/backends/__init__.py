"""The model servers a worker can call; each maps its library's errors to ours once."""
