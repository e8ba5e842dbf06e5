"""A job's states and the steps between them: the one place a state is spelled.

A job is one claimed site message in the ledger, from its claim until it ends in a reply or a
recorded reason. The Redis scripts name the states by these members' names (the script loader
defines them), and every step the ledger takes is one of `STEPS`.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    CLAIMED = "claimed"  # in the ledger, not yet placed on a server
    WAITING = "waiting"  # ready, held by its bridge until a slot frees
    RETRYING = "retrying"  # to be placed again (failover, a lost server or bridge): any bridge
    DISPATCHED = "dispatched"  # sent to a server's queue
    DELIVERING = "delivering"  # its result is being posted
    ENDING = "ending"  # given up: being completed on the site, then dead
    DONE = "done"  # replied (or skipped by the entity's own rules) and completed
    REJECTED = "rejected"  # bad message or entity, or dropped: completed without a reply
    DEAD = "dead"  # every attempt failed: completed, in the dead letters

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def unplaced(self) -> bool:
        """Nobody's to run at this moment: held by a bridge or queued for one."""
        return self in UNPLACED


FINISHED = frozenset({JobState.DONE, JobState.REJECTED, JobState.DEAD})
UNPLACED = frozenset({JobState.CLAIMED, JobState.WAITING, JobState.RETRYING})
HELD_BY_BRIDGE = (JobState.CLAIMED, JobState.WAITING)

# What a job held by its bridge (claimed, or waiting for a slot) may become.
_FROM_BRIDGE = frozenset(
    {
        JobState.WAITING,
        JobState.DISPATCHED,
        JobState.RETRYING,
        JobState.ENDING,
        JobState.REJECTED,
        JobState.DEAD,
    }
)

# Every step a job may take: from a state, the states it may go to next.
STEPS: dict[JobState, frozenset[JobState]] = {
    JobState.CLAIMED: _FROM_BRIDGE,
    JobState.WAITING: _FROM_BRIDGE,
    JobState.RETRYING: frozenset({JobState.RETRYING, JobState.WAITING, JobState.ENDING}),
    JobState.DISPATCHED: frozenset(
        {
            JobState.DISPATCHED,
            JobState.DELIVERING,
            JobState.WAITING,
            JobState.RETRYING,
            JobState.ENDING,
        }
    ),
    JobState.DELIVERING: frozenset(
        {
            JobState.DELIVERING,
            JobState.DONE,
            JobState.RETRYING,
            JobState.ENDING,
            JobState.REJECTED,
        }
    ),
    JobState.ENDING: frozenset({JobState.ENDING, JobState.DEAD, JobState.REJECTED}),
    JobState.DEAD: frozenset({JobState.RETRYING, JobState.ENDING}),
    JobState.DONE: frozenset(),
    JobState.REJECTED: frozenset(),
}


def may_step(source: JobState, target: JobState) -> bool:
    return target in STEPS[source]
