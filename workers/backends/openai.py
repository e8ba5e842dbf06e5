"""The openai backend: one OpenAI-compatible server, such as a llama-server serving one model
(on :8080 by default) or Ollama's and LM Studio's `/v1`."""

from __future__ import annotations

from typing import ClassVar

import httpx

from workers.backends.base import Inventory, Measures
from workers.backends.context import ContextFit
from workers.backends.fitted import FittedBackend
from workers.backends.model_server import ModelServer, ServerState
from workers.contract.protocol import ChatOutcome, ChatRequest
from workers.settings import per_model
from workers.transport import Links

LLAMA_SERVER_PORT = 8080  # the node's port for an ssh:// address that names none


class OpenAIBackend(FittedBackend):
    """One server. A llama-server tells its model (`/v1/models`), slots and context (`/props`):
    its slots are its one model's own. A server that does not (one serving many models)
    shares its slots; `model_slots` and `model_context` then say what they know.

    While a llama-server loads its model (`/health` answers 503) the model is recorded as
    loading, not loaded, and the server stays healthy with its slots: a request sent to it
    meanwhile waits for the load, within the first token's allowance (the whole read
    allowance, since the model is not loaded), as a request to Ollama waits for its load. The
    models it last listed are kept while it loads, since it lists none then. The server is at
    `http://…` or on a node reached over SSH (`ssh://alias`, through `links`, which the backend
    closes with itself)."""

    kind: ClassVar[str] = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 300.0,
        model_slots: dict[str, int] | None = None,
        model_context: dict[str, int] | None = None,
        max_loaded: int = 0,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 64,
        server_id: str = "",
        links: Links | None = None,
    ) -> None:
        self._links = links or Links(connect_wait_s=connect_timeout, server_id=server_id)
        link = self._links.open(base_url, LLAMA_SERVER_PORT)
        self._http = self._links.client(transport, max_connections=max_connections)
        self.server = ModelServer(
            link.base_url,
            self._http,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            name=link.address,
        )
        self.model_slots = dict(model_slots or {})
        self.model_context = dict(model_context or {})
        self.max_loaded = max_loaded
        self.fit = ContextFit(server_id)
        self.measures = Measures()
        self._told = ServerState(ready=False)

    @property
    def address(self) -> str:
        return self.server.name

    def send(
        self,
        request: ChatRequest,
        first_token_s: float | None,
        stall_s: float | None,
        max_reply_bytes: int,
        job_id: str,
    ) -> ChatOutcome:
        return self.server.chat_when_loaded(
            request,
            first_token_s=first_token_s,
            stall_s=stall_s,
            max_reply_bytes=max_reply_bytes,
        )

    def inventory(self) -> Inventory:
        state = self.server.state()
        if state.ready:
            self._told = state
        told = self._told  # what it said when it last answered whole
        models = list(state.models or told.models)
        slots: dict[str, int] = {}
        context: dict[str, int] = {}
        for model in models:
            own = told.slots if told.slots is not None else per_model(self.model_slots, model)
            if own is not None:
                slots[model] = own
            size = told.context or per_model(self.model_context, model)
            if size is not None:
                context[model] = size
        context.update(self.fit.contexts())
        one_model = told.slots is not None or told.context is not None  # a llama-server
        return Inventory(
            models=models,
            loaded=models if state.ready else [],
            loading=[] if state.ready else models,
            model_slots=slots,
            max_loaded=1 if one_model and len(models) == 1 else self.max_loaded,
            context=context,
            tokens_per_s=self.measures.tokens_per_s(),
            load_s=self.measures.load_s(),
        )
