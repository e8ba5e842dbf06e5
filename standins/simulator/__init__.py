"""Simulated model servers: Ollama, llama.cpp's `llama-server`, and the operator's pool manager
that starts llama-servers on demand.

A simulated Ollama serves Ollama's HTTP API with scripted models, load times, speed and slots;
a simulated llama-server serves one model with `parallel` slots and answers any model name; a
simulated pool manager starts llama-servers per model on loopback ports and reproduces its
documented hazards. One process serves many, each on its own port. Replies are deterministic
words, so tests can compare them; two directives in the last user message script a reply
(`sim-say: text`) or an HTTP error (`sim-error:503`), and a system prompt that mentions
"score" gets `Score: N` (the EQ scorer's stand-in). `/sim/...` routes read stats and inject
faults; they do not exist in the real servers.
"""

from standins.simulator.app import build_app
from standins.simulator.llama_server import SimulatedLlamaServer
from standins.simulator.llama_wire import model_path
from standins.simulator.pool import SimulatedPool
from standins.simulator.server import SimulatedOllama
from standins.simulator.serving import SimulatorFleet, serve, simulated
from standins.simulator.spec import (
    SPEC_KEYS,
    SimServerSpec,
    format_server_spec,
    parse_server_spec,
)

__all__ = [
    "SPEC_KEYS",
    "SimServerSpec",
    "SimulatedLlamaServer",
    "SimulatedOllama",
    "SimulatedPool",
    "SimulatorFleet",
    "build_app",
    "format_server_spec",
    "model_path",
    "parse_server_spec",
    "serve",
    "simulated",
]
