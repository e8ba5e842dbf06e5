"""Model names as Ollama matches them: `name` is `name:latest`, the default registry and
namespace may be left out, and case does not matter. An entity's model and a server's list
are compared by these keys (the bridge), and so are a request's model and what a server has
loaded (its worker); each is still sent to a server as it was written."""

from __future__ import annotations

import re

DEFAULT_TAG = "latest"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
# A quantization at the end of a .gguf file's name, after the `_` that stands for its `-`.
_QUANT_SUFFIX = re.compile(r"_((?:b?f\d+)|(?:i?q\d\w*))$", re.IGNORECASE)
_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")


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


def served_model_name(served: str) -> str:
    """The name a llama-server's model goes by: its alias as it is; for a path, the pool's
    folder convention (`/models/the-eternal-f16/the-eternal_f16.gguf` → `the-eternal-f16`):
    the folder's name when the file is named after it, else the file's, its `_<quant>` made
    `-<quant>`."""
    text = served.strip()
    if not text.lower().endswith(".gguf"):
        return text
    parts = re.split(r"[\\/]", text)
    stem = _SHARD_SUFFIX.sub("", parts[-1][: -len(".gguf")])
    folder = parts[-2] if len(parts) >= 2 else ""
    if folder and folder.replace("-", "_").lower() == stem.replace("-", "_").lower():
        return folder
    quant = _QUANT_SUFFIX.search(stem)
    return f"{stem[: quant.start()]}-{quant.group(1)}" if quant else stem
