"""Two-hop Celery pipelines on the same settings as the system's workers, the ceilings we cannot
beat: a task on a server queue whose worker sends one task to a control queue.

  bench.hop_server → bench.hop_control      no-op tasks: Celery and Redis alone
  bench.http_reply → bench.http_post        the same two hops with the HTTP exchanges the
  bench.http_score → bench.http_patch       contract and Ollama require and nothing else, for
      each of a message's two jobs: the reply's server hop makes its chat against its Ollama
      (`OLLAMA_CLOUD_OLLAMA_URL`) and its control hop posts the reply and completes the
      message on the site queue (`OLLAMA_CLOUD_QUEUE_URL`); the score's server hop makes the
      scorer's chat and its control hop PATCHes the eqScore. One client of each kind per
      worker process, kept alive. Each control hop counts one job done.

Workers run it as `celery -A bench.floor_app worker -Q <queue>` with the project root on the path.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import redis
from celery import Celery, signals

from orchestrator.site_queue import SiteQueueClient
from workers.contract.celery_config import celery_config, quiet_task_trace
from workers.contract.settings import CelerySettings

SERVER_QUEUE = "floor-server"
CONTROL_QUEUE = "floor-control"
DONE_KEY = "bench:floor:done"
SCORE = re.compile(r"(\d+)")

app = Celery("floor", set_as_current=False)
app.add_defaults(lambda: {**celery_config(CelerySettings()), "worker_concurrency": 4})
signals.after_setup_logger.connect(quiet_task_trace, weak=False)

T = TypeVar("T")
_lock = threading.Lock()
_clients: dict[str, Any] = {}


def _once(name: str, make: Callable[[], T]) -> T:
    """This process's one client of a kind, made at first use and shared by its threads."""
    with _lock:
        if name not in _clients:
            _clients[name] = make()
        client: T = _clients[name]
        return client


def _redis() -> redis.Redis:
    return _once("redis", lambda: redis.Redis.from_url(os.environ["OLLAMA_CLOUD_REDIS_URL"]))


def _ollama() -> httpx.Client:
    return _once(
        "ollama",
        lambda: httpx.Client(
            base_url=os.environ["OLLAMA_CLOUD_OLLAMA_URL"],
            timeout=httpx.Timeout(300.0, connect=3.0),
        ),
    )


def _queue() -> SiteQueueClient:
    return _once("queue", lambda: SiteQueueClient(os.environ["OLLAMA_CLOUD_QUEUE_URL"]))


# No-op hops ------------------------------------------------------------------------------------


@app.task(name="bench.hop_server", acks_late=True, ignore_result=True)
def hop_server(index: int) -> None:
    app.send_task("bench.hop_control", args=[index], queue=CONTROL_QUEUE)


@app.task(name="bench.hop_control", acks_late=True, ignore_result=True)
def hop_control(index: int) -> None:
    _redis().incr(DONE_KEY)


# HTTP hops -------------------------------------------------------------------------------------


def chat(body: dict[str, Any]) -> str:
    """One non-streamed /api/chat: the answer's text."""
    answer = _ollama().post("/api/chat", json=body)
    answer.raise_for_status()
    return str(answer.json()["message"]["content"])


@app.task(name="bench.http_reply", acks_late=True, ignore_result=True)
def http_reply(job: dict[str, Any]) -> None:
    """`job`: the message's id, its reply's fields and the reply's Ollama request body."""
    text = chat(job["chat"])
    app.send_task(
        "bench.http_post",
        args=[{"id": job["id"], "reply": {**job["reply"], "text": text}}],
        queue=CONTROL_QUEUE,
    )


@app.task(name="bench.http_score", acks_late=True, ignore_result=True)
def http_score(job: dict[str, Any]) -> None:
    """`job`: the message's id and the scorer's Ollama request body."""
    answer = chat(job["eq"])
    app.send_task(
        "bench.http_patch", args=[{"id": job["id"], "score": answer}], queue=CONTROL_QUEUE
    )


@app.task(name="bench.http_post", acks_late=True, ignore_result=True)
def http_post(result: dict[str, Any]) -> None:
    queue = _queue()
    queue.post_comment(result["reply"])
    queue.complete(result["id"])
    _redis().incr(DONE_KEY)


@app.task(name="bench.http_patch", acks_late=True, ignore_result=True)
def http_patch(result: dict[str, Any]) -> None:
    found = SCORE.search(result["score"])
    _queue().patch_eq(result["id"], int(found.group(1)) if found else 0)
    _redis().incr(DONE_KEY)
