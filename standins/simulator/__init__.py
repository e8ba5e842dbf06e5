"""A simulated Ollama server: Ollama's HTTP API with scripted models, load times, speed and slots.

One process serves many simulated servers, each on its own port. Replies are deterministic
words, so tests can compare them; two directives in the last user message script a reply
(`sim-say: text`) or an HTTP error (`sim-error:503`), and a system prompt that mentions
"score" gets `Score: N` (the EQ scorer's stand-in). `/sim/...` routes read stats and inject
faults; they do not exist in Ollama.
"""

from standins.simulator.app import build_app
from standins.simulator.server import SimulatedOllama
from standins.simulator.serving import SimulatorFleet, serve
from standins.simulator.spec import SPEC_KEYS, SimServerSpec, parse_server_spec

__all__ = [
    "SPEC_KEYS",
    "SimServerSpec",
    "SimulatedOllama",
    "SimulatorFleet",
    "build_app",
    "parse_server_spec",
    "serve",
]
