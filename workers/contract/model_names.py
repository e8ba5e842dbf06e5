"""Model names as Ollama matches them: `name` is `name:latest`, the default registry and
namespace may be left out, and case does not matter. An entity's model and a server's list
are compared by these keys (the bridge), and so are a request's model and what a server has
loaded (its worker); each is still sent to a server as it was written."""

from __future__ import annotations

DEFAULT_TAG = "latest"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


def model_key(name: str) -> str:
    """`Llama3.2` → `llama3.2:latest`; `registry.ollama.ai/library/qwen:7b` → `qwen:7b`."""
    name = name.strip().lower()
    if not name:
        return name
    path, _, last = name.rpartition("/")
    base, colon, tag = last.partition(":")
    if not colon or not tag:
        tag = DEFAULT_TAG
    parts = [*path.split("/"), base] if path else [base]
    if len(parts) == 3 and parts[0] == DEFAULT_HOST:
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == DEFAULT_NAMESPACE:
        parts = parts[1:]
    return f"{'/'.join(parts)}:{tag}"
