"""Model names matched as Ollama matches them, on the entity's side and the server's alike."""

from __future__ import annotations

import pytest

from orchestrator.domain.routing import able_servers
from orchestrator.domain.servers import ServerView
from workers.contract.model_names import model_key
from workers.contract.server_record import ServerRecord


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("the-eternal-f16", "the-eternal-f16:latest"),
        ("the-eternal-f16:latest", "the-eternal-f16:latest"),
        ("Llama3.2:3B", "llama3.2:3b"),
        ("library/qwen2.5:7b", "qwen2.5:7b"),
        ("registry.ollama.ai/library/qwen2.5:7b", "qwen2.5:7b"),
        ("registry.ollama.ai/someone/model", "someone/model:latest"),
        ("hf.co/Org/Model-GGUF:Q4_K_M", "hf.co/org/model-gguf:q4_k_m"),
        ("  phi3  ", "phi3:latest"),
        ("phi3:", "phi3:latest"),
        ("", ""),
    ],
)
def test_a_name_s_key_is_ollama_s_reading_of_it(name: str, key: str) -> None:
    assert model_key(name) == key


@pytest.mark.parametrize(
    ("entity_model", "listed"),
    [
        ("the-eternal-f16", "the-eternal-f16:latest"),
        ("llama3.2:3b", "Llama3.2:3B"),
        ("hf.co/Org/Model-GGUF:Q4_K_M", "hf.co/Org/Model-GGUF:Q4_K_M"),
        ("HF.co/org/model-gguf:q4_k_m", "hf.co/Org/Model-GGUF:Q4_K_M"),
    ],
)
def test_a_server_listing_the_model_in_its_own_spelling_can_answer(
    entity_model: str, listed: str
) -> None:
    record = ServerRecord(id="mac-1", capacity=1, models=[listed], loaded=[listed])
    server = ServerView.from_record(record)
    assert able_servers([server], model_key(entity_model)) == [server]
    assert model_key(entity_model) in server.loaded


def test_a_different_tag_is_a_different_model() -> None:
    record = ServerRecord(id="mac-1", capacity=1, models=["llama3.2:3b"])
    server = ServerView.from_record(record)
    assert able_servers([server], model_key("llama3.2")) == []
