"""State in Redis: the ledger (the only code that touches job keys) and the fleet registry."""
