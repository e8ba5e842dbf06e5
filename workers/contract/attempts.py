"""A worker's two steps on its job's ledger entry: begin the attempt, keep its result.

The rest of the ledger is the orchestrator's (`orchestrator.state.ledger`); both sides change a
job only through the contract's scripts, which check that the attempt is still the current one.
"""

from __future__ import annotations

import redis

from workers.contract.keys import Keys
from workers.contract.protocol import GenerateResult
from workers.contract.scripts import register


class AttemptLedger:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._begin = register(client, "begin_attempt")
        self._keep = register(client, "keep_result")

    def begin(self, job_id: str, attempt: int, server_id: str, now: float) -> bool:
        """True if `attempt` is the job's current one and the job is placed on `server_id`,
        now marked as begun; False if the ledger has moved on (a later attempt, or the job
        ended) or the job is placed elsewhere."""
        args: list[str | int] = [attempt, f"{now:.3f}", server_id]
        return bool(self._begin(keys=[self.keys.job(job_id)], args=args))

    def keep_result(self, result: GenerateResult) -> bool:
        """Keep the result on the job while its attempt is current, so the sweep can deliver
        it again if its delivery is lost. False if the attempt is stale."""
        kept = self._keep(
            keys=[self.keys.job(result.job_id)],
            args=[
                result.attempt,
                result.model_dump_json(),
                f"{result.finished_at:.3f}",
                result.server_id,
            ],
        )
        return bool(kept)
