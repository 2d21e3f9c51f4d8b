"""Pure: what a failed send means, as one table from the exception to its consequences.

The send stage asks :func:`outcome` and does what it says: which journal state to write (if
any), whether an attempt is spent, what the relay's health is told, which event is logged,
whether the mail may have gone out (for the sending limits), and what the worker does next.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from kanidm_mail_sender.core.states import DEFERRED, EXPIRED, REJECTED
from kanidm_mail_sender.errors import (
    DeliveryDeferred,
    DeliveryRejected,
    LinkExpired,
    RelayThrottled,
    RelayUnavailable,
    RenderError,
)

__all__ = [
    "HealthEvent",
    "Next",
    "Outcome",
    "counted_after_all",
    "escalated",
    "outcome",
    "spent_after_all",
]


class HealthEvent(enum.Enum):
    """What the relay's health is told about the send."""

    SUCCEEDED = "succeeded"  # the relay answered: it works, whatever it said of this mail
    CANCELLED = "cancelled"  # ended without the relay's word (local error, expiry)
    TRANSPORT_FAILED = "transport_failed"  # lost connection or timeout mid-transaction
    RELAY_DOWN = "relay_down"  # a relay-wide refusal or failure: pause
    THROTTLED = "throttled"  # the relay limits our rate: slow down


class Next(enum.Enum):
    """What the worker does with this destination next."""

    RETRY = "retry"  # try it again once the relay's health admits a send (no attempt spent)
    STOP = "stop"  # give the message up for now (expired)
    FAILED = "failed"  # done with this destination at this poll (journalled)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The consequences of one failed send."""

    state: str | None  # the journal state to write, None: nothing
    attempt: bool  # one attempt is spent
    health: HealthEvent
    event: str  # the log event ("": the health change logs it)
    then: Next
    counted: bool  # the mail may have gone out: it counts against the sending limits


_THROTTLED = Outcome(None, False, HealthEvent.THROTTLED, "", Next.RETRY, counted=False)
_RELAY_DOWN = Outcome(None, False, HealthEvent.RELAY_DOWN, "", Next.RETRY, counted=False)
_EXPIRED = Outcome(
    EXPIRED, False, HealthEvent.CANCELLED, "message.expired", Next.STOP, counted=False
)
_REJECTED = Outcome(
    REJECTED, True, HealthEvent.SUCCEEDED, "mail.rejected", Next.FAILED, counted=True
)
_RENDER_FAILED = Outcome(
    DEFERRED, True, HealthEvent.CANCELLED, "message.render_failed", Next.FAILED, counted=False
)
_INVALID = Outcome(
    REJECTED, True, HealthEvent.CANCELLED, "mail.rejected", Next.FAILED, counted=False
)
_LOST = Outcome(
    DEFERRED, True, HealthEvent.TRANSPORT_FAILED, "mail.deferred", Next.FAILED, counted=True
)
_DEFERRED = Outcome(
    DEFERRED, True, HealthEvent.SUCCEEDED, "mail.deferred", Next.FAILED, counted=True
)


def outcome(exc: BaseException) -> Outcome | None:
    """The consequences of ``exc`` ending a send; None: not a delivery outcome (a bug, or a
    cancellation), which the caller re-raises."""
    # Order matters: RelayThrottled is a RelayError, and an address error a ValueError.
    if isinstance(exc, RelayThrottled):
        return _THROTTLED
    if isinstance(exc, RelayUnavailable):
        return _RELAY_DOWN
    if isinstance(exc, LinkExpired):
        return _EXPIRED
    if isinstance(exc, DeliveryRejected):
        return _REJECTED
    if isinstance(exc, RenderError):
        return _RENDER_FAILED
    if isinstance(exc, DeliveryDeferred):
        return _LOST if exc.transport else _DEFERRED
    if isinstance(exc, ValueError):  # an address or header value the mail cannot carry
        return _INVALID
    return None


def spent_after_all(free_verdicts: int, accepted_meanwhile: int, *, limit: int = 3) -> bool:
    """Whether a destination that drew ``free_verdicts`` relay-wide verdicts in a row (no
    attempt spent), while ``accepted_meanwhile`` other mails went through, is now counted:
    a relay that takes other mail is not down for everyone, so no retry is free forever."""
    return free_verdicts >= limit and accepted_meanwhile > 0


def escalated(relay_down: bool) -> Outcome:
    """The outcome of a destination's refusal that the evidence made relay-wide: a pause
    (``relay_down``) or a slow-down."""
    return _RELAY_DOWN if relay_down else _THROTTLED


def counted_after_all(free: Outcome) -> Outcome:
    """A free (relay-wide) outcome turned into this destination's deferral, attempt spent."""
    return replace(free, state=DEFERRED, attempt=True, event="mail.deferred", then=Next.FAILED)
