"""Pure delivery decisions: what to do with a queued message given the journal and the clock."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kanidm_mail_sender.core.messages import CredentialResetV1, QueuedMessage
from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, EXPIRED, REJECTED, DestinationState

__all__ = [
    "NO_DESTINATION",
    "Action",
    "Plan",
    "backoff_delay",
    "expires_at",
    "is_expired",
    "is_fresh",
    "plan_message",
]

# The journal row that records "this message has no destination at all".
NO_DESTINATION = ""


class Action(enum.Enum):
    """What the engine should do with a message at this poll."""

    SEND = "send"  # some destinations are due: mail them
    MARK = "mark"  # every destination was accepted: only mark it sent
    EXPIRE = "expire"  # a credential reset whose link has expired: journal it, never mail it
    NO_DESTINATION = "no_destination"  # nothing to send to: journal it, leave it queued
    WAIT = "wait"  # deferred destinations are not due yet
    HOLD = "hold"  # a standby leaves a message this fresh to the primary
    DONE = "done"  # already handled for good (expired, or failed permanently)


@dataclass(frozen=True, slots=True)
class Plan:
    """The decision for one message; ``due`` lists the destinations to try now, and
    ``attempts`` how often each of them was tried before."""

    action: Action
    due: tuple[str, ...] = ()
    accepted: frozenset[str] = frozenset()
    attempts: Mapping[str, int] = field(default_factory=dict)


def plan_message(
    message: QueuedMessage,
    states: Mapping[str, DestinationState],
    now: float,
    *,
    standby_delay: float = 0.0,
) -> Plan:
    """Decide what to do with ``message`` at wall-clock time ``now``; a standby
    (``standby_delay`` > 0) holds what has been ready for less than that long."""
    if any(s.state == EXPIRED for s in states.values()) or NO_DESTINATION in states:
        return Plan(Action.DONE)
    accepted = frozenset(d for d in message.destinations if _state(states, d) == ACCEPTED)
    if message.destinations and len(accepted) == len(message.destinations):
        return Plan(Action.MARK, accepted=accepted)  # our own acceptances: a standby marks too
    if standby_delay > 0 and is_fresh(message, now, standby_delay):
        return Plan(Action.HOLD, accepted=accepted)
    if not message.destinations:
        return Plan(Action.NO_DESTINATION)
    if is_expired(message, now):
        return Plan(Action.EXPIRE, accepted=accepted)
    due = tuple(d for d in message.destinations if _is_due(states.get(d), now))
    if due:
        attempts = {d: states[d].attempts for d in due if d in states}
        return Plan(Action.SEND, due=due, accepted=accepted, attempts=attempts)
    waiting = any(_state(states, d) == DEFERRED for d in message.destinations)
    return Plan(Action.WAIT if waiting else Action.DONE, accepted=accepted)


def expires_at(message: QueuedMessage) -> float | None:
    """Unix time after which the message must not be mailed, if it has one."""
    template = message.template
    return template.expiry_time.timestamp() if isinstance(template, CredentialResetV1) else None


def is_expired(message: QueuedMessage, now: float) -> bool:
    """Whether the message's link is dead at ``now``: the one expiry rule, for the planner, the
    send stage, and (as ``not_after``) the relay's checks at the wire."""
    deadline = expires_at(message)
    return deadline is not None and now >= deadline


def is_fresh(message: QueuedMessage, now: float, delay: float) -> bool:
    """Whether ``message`` has been ready for less than ``delay`` seconds at ``now``.

    Kanidm always sets ``send_after``; an entry without one has no known age and counts as
    old, so that a standby never leaves a message unsent (at least once before exactly once).
    """
    ready_since = message.send_after
    return ready_since is not None and now - ready_since.timestamp() < delay


def _state(states: Mapping[str, DestinationState], destination: str) -> str | None:
    found = states.get(destination)
    return None if found is None else found.state


def _is_due(state: DestinationState | None, now: float) -> bool:
    if state is None:
        return True
    if state.state in (ACCEPTED, REJECTED, EXPIRED):
        return False
    return state.next_attempt is None or state.next_attempt <= now


def backoff_delay(
    attempts: int,
    *,
    initial: float,
    maximum: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with ±25 % jitter: about ``initial`` after the first failure,
    doubling each time, never above ``maximum``."""
    base = min(maximum, initial * 2.0 ** max(attempts - 1, 0))
    return min(maximum, base * (0.75 + rand() / 2))
