"""The engine's graceful stop: what is in flight finishes, send and mark."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import Harness


async def test_graceful_stop_finishes_in_flight_send_and_mark(
    harness_factory: Callable[..., Harness], kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    message = kanidm.queue_test_message("slow@example.com")
    relay.faults.stall_in_data = 0.5
    harness = harness_factory()
    poll = asyncio.create_task(harness.engine.poll())
    while not harness.engine.busy:
        await asyncio.sleep(0.01)
    await poll
    cut_off = await harness.engine.shutdown(5)
    assert not cut_off
    assert len(relay.mails) == 1
    assert kanidm.sent() == [message]
