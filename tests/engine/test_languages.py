"""A message's own language through the whole engine: served, served by a nearer catalog,
or unserved and sent in mail_language with one warning per language."""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage

from structlog.testing import capture_logs

from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from tests.helpers import Harness


async def test_each_message_goes_in_its_own_language_or_in_mail_language(
    harness_factory: Callable[..., Harness], kanidm: KanidmStandIn, relay: SmtpStandIn
) -> None:
    asked = {
        "at@example.com": "de-AT",
        "br@example.com": "pt-BR",
        "k1@example.com": "tlh",
        "k2@example.com": "tlh",
        "none@example.com": None,
    }
    for address, language in asked.items():
        kanidm.queue_credential_reset(address, language=language)
    harness = harness_factory(mail_language="fr", mail_timezone="Europe/Paris")
    with capture_logs() as logs:
        await harness.cycle()
    assert kanidm.unsent() == []
    mails: dict[str, EmailMessage] = {m.rcpt_tos[0]: m.message for m in relay.mails}
    got = {address: mails[address]["Content-Language"] for address in asked}
    assert got == {
        "at@example.com": "de",
        "br@example.com": "pt-BR",
        "k1@example.com": "fr",
        "k2@example.com": "fr",
        "none@example.com": "fr",
    }
    assert "Zurücksetzen" in mails["at@example.com"]["Subject"]
    assert "réinitialisation" in mails["none@example.com"]["Subject"]
    unserved = [e for e in logs if e["event"] == "message.language_unserved"]
    assert [(e["language"], e["sent_in"]) for e in unserved] == [("tlh", "fr")]
