"""What an operator runs: `ollama-cloud status` and `ollama-cloud jobs`."""
