"""The one record of an expired reset: journalled, counted and logged alike wherever it is
found (at planning, before a send, or at the wire)."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from kanidm_mail_sender.core.states import EXPIRED
from kanidm_mail_sender.engine.metrics import Metrics
from kanidm_mail_sender.logs import get_logger
from kanidm_mail_sender.state.journal import Journal

__all__ = ["EXPIRED_NOTE", "record_expired"]

log = get_logger(__name__)

EXPIRED_NOTE = "the reset link expired before it went out; not mailed, left in Kanidm's queue"


async def record_expired(
    journal: Journal,
    metrics: Metrics,
    message_id: UUID,
    destinations: Iterable[str],
    now: float,
) -> None:
    """Journal ``destinations`` of the message as expired; one error line and one count."""
    destinations = list(destinations)
    log.error(
        "message.expired", message_id=str(message_id), destinations=destinations, note=EXPIRED_NOTE
    )
    metrics.expired.inc()
    for destination in destinations:
        await journal.record(message_id, destination, EXPIRED, now=now)
