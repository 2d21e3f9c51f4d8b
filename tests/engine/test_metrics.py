"""Metrics and readiness as a scraper sees them, after real deliveries and relay loss."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from kanidm_mail_sender.config.settings import ListenAddress
from kanidm_mail_sender.runtime.listener import start_metrics_server
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import Harness


async def test_metrics_scraped_after_a_real_delivery(
    harness_factory: Callable[..., Harness], kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    kanidm.queue_test_message("a@example.com")
    kanidm.queue_credential_reset("late@example.com", expires_in=-5)
    harness = harness_factory()
    server = await start_metrics_server(
        harness.engine.metrics, harness.engine.view, ListenAddress("127.0.0.1", 0)
    )
    try:
        await harness.cycle()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            text = (await http.get("/metrics")).text
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await server.close()
    assert "kanidm_mail_sender_delivered_total 1.0" in text
    assert "kanidm_mail_sender_marked_sent_total 1.0" in text
    assert "kanidm_mail_sender_expired_total 1.0" in text
    assert "kanidm_mail_sender_queue_size 2.0" in text
    assert "kanidm_mail_sender_last_successful_poll_timestamp_seconds" in text


async def test_readiness_flips_when_the_relay_goes_away(
    harness_factory: Callable[..., Harness], kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    from kanidm_mail_sender.engine.engine import EngineSettings

    harness = harness_factory(settings=EngineSettings(relay_probe_interval=0.0))
    metrics = harness.engine.metrics
    await harness.cycle()
    assert metrics.ready() == (True, "ok")
    await relay.stop()
    await harness.smtp.close()  # drop pooled connections, as an idle timeout would
    await harness.cycle()
    ready, why = metrics.ready()
    assert not ready
    assert "relay" in why
    kanidm.faults.list_statuses = [500]
    await relay.start()
    await asyncio.sleep(0.05)  # past the list's backoff (10 ms in tests)
    await harness.cycle()
    assert metrics.ready()[0] is False  # the poll failed
