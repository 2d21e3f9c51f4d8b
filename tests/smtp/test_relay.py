"""The SMTP side against real aiosmtpd relays with trustme certificates."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from kanidm_mail_sender.config.relays import parse_relay_url
from kanidm_mail_sender.errors import (
    DeliveryDeferred,
    DeliveryRejected,
    RelayMisconfigured,
    RelayThrottled,
    RelayUnavailable,
)
from kanidm_mail_sender.sandbox.certs import Certs
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from kanidm_mail_sender.smtp.auth import PasswordAuth
from kanidm_mail_sender.smtp.relay import SmtpRelay, build_tls_context
from tests.helpers import SMTP_AUTH, envelope

RelayFactory = Callable[..., Awaitable[SmtpStandIn]]


_OPEN: list[SmtpRelay] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _OPEN:
        await _OPEN.pop().close()


def client(
    stand_in: SmtpStandIn,
    certs: Certs,
    *,
    auth: tuple[str, str] | None = SMTP_AUTH,
    context: ssl.SSLContext | None = None,
    command_timeout: float = 5,
    max_connections: int = 4,
) -> SmtpRelay:
    smtp = SmtpRelay(
        parse_relay_url(stand_in.url),
        tls_context=context or build_tls_context(certs.ca_path),
        auth=PasswordAuth(*auth) if auth else None,
        helo_name="sender.test",
        connect_timeout=5,
        command_timeout=command_timeout,
        max_connections=max_connections,
    )
    _OPEN.append(smtp)
    return smtp


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
async def test_mail_arrives_with_headers_and_body(
    mode: str, relay_factory: RelayFactory, certs: Certs
) -> None:
    stand_in = await relay_factory(mode=mode)
    smtp = client(stand_in, certs)
    sent = envelope()
    receipt = await smtp.send(sent)
    await smtp.close()
    assert "queued" in receipt.reply
    assert receipt.queue_id == "Q1"
    (mail,) = stand_in.mails
    assert mail.mail_from == "idm@example.com"
    assert mail.rcpt_tos == ["rcpt@example.com"]
    assert mail.authenticated_as == SMTP_AUTH[0]
    msg = mail.message
    assert msg["Subject"] == "Kanidm: Test Message"
    assert msg["Message-ID"] == sent.message_id
    assert msg["Auto-Submitted"] == "auto-generated"  # no vacation reply to Reply-To
    assert msg["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    assert "Hello Rita," in msg.get_content()


async def test_connections_are_reused(relay: SmtpStandIn, certs: Certs) -> None:
    smtp = client(relay, certs, max_connections=1)
    for _ in range(5):
        await smtp.send(envelope())
    await smtp.close()
    assert len(relay.mails) == 5
    assert smtp.connections_opened == 1


async def test_server_without_starttls_is_refused(
    relay_factory: RelayFactory, certs: Certs
) -> None:
    plain = await relay_factory(mode="plain", auth=None)
    smtp = client(plain, certs, auth=None)
    with pytest.raises(RelayMisconfigured, match="STARTTLS"):
        await smtp.send(envelope())
    assert plain.mails == []


async def test_wrong_password_is_relay_wide(relay: SmtpStandIn, certs: Certs) -> None:
    smtp = client(relay, certs, auth=(SMTP_AUTH[0], "wrong"))
    with pytest.raises(RelayMisconfigured, match="535") as caught:
        await smtp.send(envelope())
    assert "wrong" not in str(caught.value)
    assert relay.mails == []
    assert relay.auth_failures == 1  # one mechanism, no fallback guessing


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
async def test_unknown_ca_is_rejected(mode: str, relay_factory: RelayFactory, certs: Certs) -> None:
    stand_in = await relay_factory(mode=mode)
    smtp = client(stand_in, certs, context=build_tls_context(None))
    with pytest.raises(RelayMisconfigured, match="TLS"):
        await smtp.send(envelope())
    assert stand_in.mails == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("550 5.1.1 no such user", DeliveryRejected),
        ("451 4.3.0 try later", DeliveryDeferred),
        ("421 4.7.0 closing", RelayUnavailable),
        # Rate words to RCPT are still that recipient's (only evidence makes them ours)...
        ("450 4.7.1 rate limit exceeded", DeliveryDeferred),
        ("452 4.7.1 slow down", DeliveryDeferred),
        # ...unless the words name us, as Postfix's delayed sender restrictions do.
        ("450 4.7.1 <u@example.com>: Sender address rejected: rate limit exceeded", RelayThrottled),
        ("553 5.7.1 <u@example.com>: Sender address rejected: not owned", RelayUnavailable),
    ],
)
async def test_recipient_replies_are_classified(
    relay: SmtpStandIn, certs: Certs, reply: str, error: type[Exception]
) -> None:
    relay.faults.rcpt_replies["bad@example.com"] = [reply]
    smtp = client(relay, certs)
    with pytest.raises(error, match=reply.split()[0]):
        await smtp.send(envelope("bad@example.com"))
    await smtp.send(envelope("good@example.com"))  # the pool recovers
    assert [m.rcpt_tos for m in relay.mails] == [["good@example.com"]]


async def test_data_rejection_and_drop(relay: SmtpStandIn, certs: Certs) -> None:
    relay.faults.data_replies["a@example.com"] = ["554 5.6.0 content rejected"]
    relay.faults.drop_in_data["b@example.com"] = 1
    smtp = client(relay, certs)
    with pytest.raises(DeliveryRejected, match="554"):
        await smtp.send(envelope("a@example.com"))
    with pytest.raises(DeliveryDeferred):
        await smtp.send(envelope("b@example.com"))
    await smtp.send(envelope("b@example.com"))
    assert [m.rcpt_tos for m in relay.mails] == [["b@example.com"]]


async def test_a_stalled_relay_times_out(relay: SmtpStandIn, certs: Certs) -> None:
    relay.faults.stall_in_data = 3
    smtp = client(relay, certs, command_timeout=0.5)
    with pytest.raises(DeliveryDeferred, match="in time"):
        await smtp.send(envelope())


async def test_check_authenticates_without_sending(relay: SmtpStandIn, certs: Certs) -> None:
    await client(relay, certs).check()
    assert relay.mails == []
    with pytest.raises(RelayMisconfigured):
        await client(relay, certs, auth=("mailer", "nope")).check()


async def test_received_bytes_parse(relay: SmtpStandIn) -> None:
    assert email.message_from_bytes(b"Subject: x\r\n\r\n", policy=email.policy.default)


async def test_non_ascii_address_goes_out_with_smtputf8_and_size(
    relay: SmtpStandIn, certs: Certs
) -> None:
    sent = envelope("jösé@exämple.test")
    await client(relay, certs).send(sent)
    [mail] = relay.mails
    assert mail.rcpt_tos == ["jösé@exämple.test"]
    assert "SMTPUTF8" in mail.mail_options
    assert f"SIZE={len(sent.data)}" in mail.mail_options
    assert "\r\nTo: jösé@exämple.test\r\n".encode() in mail.data  # raw UTF-8, RFC 6532


async def test_non_ascii_address_without_smtputf8_is_rejected_for_good(
    relay_factory: RelayFactory, certs: Certs
) -> None:
    relay = await relay_factory(smtputf8=False)
    smtp = client(relay, certs)
    with pytest.raises(DeliveryRejected, match="needs SMTPUTF8"):
        await smtp.send(envelope("jösé@exämple.test"))
    await smtp.send(envelope("jose@example.test"))
    assert [m.rcpt_tos for m in relay.mails] == [["jose@example.test"]]
    assert smtp.connections_opened == 1


async def test_a_relay_without_pipelining_gets_one_command_at_a_time(
    relay_factory: RelayFactory, certs: Certs
) -> None:
    lockstep = await relay_factory(pipelining=False)
    lockstep.faults.rcpt_replies["bad@example.com"] = ["550 5.1.1 no such user"]
    smtp = client(lockstep, certs, max_connections=1)
    with pytest.raises(DeliveryRejected, match="550"):
        await smtp.send(envelope("bad@example.com"))
    await smtp.send(envelope("good@example.com"))
    assert [m.rcpt_tos for m in lockstep.mails] == [["good@example.com"]]
    assert smtp.connections_opened == 1
    assert not smtp._idle[0][0].pipelining
