"""What imitates the outside world on one machine: the site queue, simulated model servers,
an embedded Redis, the local stack and the demo. The product never imports these."""

from pathlib import Path

SAMPLE_ENTITIES_DIR = Path(__file__).parent / "sample_entities"
"""The demo's entities: two personas and the EQ scorer."""
