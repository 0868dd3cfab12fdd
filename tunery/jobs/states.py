"""Vertex job states and the one table of legal moves between them."""

from __future__ import annotations

from tunery.errors import TuneryError

PENDING = "JOB_STATE_PENDING"
RUNNING = "JOB_STATE_RUNNING"
SUCCEEDED = "JOB_STATE_SUCCEEDED"
FAILED = "JOB_STATE_FAILED"
CANCELLING = "JOB_STATE_CANCELLING"
CANCELLED = "JOB_STATE_CANCELLED"
PAUSING = "JOB_STATE_PAUSING"  # tunery's: the process saves its state and stops (the Vertex view says RUNNING)
PAUSED = "JOB_STATE_PAUSED"  # stopped with its state saved; resume queues it again (OpenAI's pause and resume)

# Vertex's finer-grained tuningJobState
WAITING_FOR_QUOTA = "TUNING_JOB_STATE_WAITING_FOR_QUOTA"
PROCESSING_DATASET = "TUNING_JOB_STATE_PROCESSING_DATASET"
TUNING = "TUNING_JOB_STATE_TUNING"
POST_PROCESSING = "TUNING_JOB_STATE_POST_PROCESSING"

ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED})
ALL = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED, PAUSING, PAUSED)

TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({RUNNING, CANCELLING, CANCELLED, FAILED, PAUSED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLING, PENDING, PAUSING}),  # -> PENDING: requeued after a crash
    CANCELLING: frozenset({CANCELLED, FAILED}),
    PAUSING: frozenset({PAUSED, SUCCEEDED, FAILED, CANCELLING}),  # it may finish before it stops
    PAUSED: frozenset({PENDING, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


class IllegalTransition(TuneryError):
    """A state change the table does not allow (e.g. cancelling a finished job)."""

    code = "failed_precondition"


def check(current: str, target: str) -> None:
    """Raise IllegalTransition unless current -> target is in the table."""
    if target not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(f"a job in state {current} cannot move to {target}")
