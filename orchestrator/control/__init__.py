"""The control side (queue `control`): delivery, failover, the sweep, recovery and beat."""
