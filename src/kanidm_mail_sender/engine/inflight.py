"""Which messages the engine holds right now, and in which stage.

A message is claimed when the dispatcher hands it to a stage and released when it is done
(marked, or left in Kanidm's queue for a later poll); a poll never hands out a message that
is still claimed, so nothing is sent twice by one process.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from kanidm_mail_sender.engine.metrics import Metrics
from kanidm_mail_sender.errors import MailSenderError

__all__ = ["InFlight", "Phase", "StageContext"]


class Phase(enum.Enum):
    """Where a claimed message is."""

    QUEUED = "queued"  # waiting in the send queue
    SENDING = "sending"  # a send worker has it
    MARKING = "marking"  # every destination accepted and journalled; waiting for mark-sent


class InFlight:
    """The claimed messages by phase; ``wait_empty()`` returns when none is left."""

    def __init__(self) -> None:
        self._phase: dict[UUID, Phase] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._phase

    def __len__(self) -> int:
        return len(self._phase)

    def hold(self, message_id: UUID, phase: Phase) -> None:
        """Claim ``message_id``, or move it to ``phase`` if already claimed."""
        self._phase[message_id] = phase
        self._empty.clear()

    def release(self, message_id: UUID) -> None:
        """The engine is done with ``message_id`` (for now)."""
        self._phase.pop(message_id, None)
        if not self._phase:
            self._empty.set()

    def in_phase(self, phase: Phase) -> list[UUID]:
        """The claimed ids in ``phase``, sorted."""
        return sorted(m for m, p in self._phase.items() if p is phase)

    async def wait_empty(self) -> None:
        """Return once nothing is claimed."""
        await self._empty.wait()


@dataclass(frozen=True, slots=True)
class StageContext:
    """What every stage shares: the claims, the metrics, the stop, the fatal path, the clock."""

    inflight: InFlight
    metrics: Metrics
    stopping: asyncio.Event
    on_fatal: Callable[[MailSenderError], None]
    clock: Callable[[], float]
