"""The sandbox, the first command a newcomer runs: it mails both messages, stops cleanly and
prints no warning about our dependencies' deprecated APIs."""

from __future__ import annotations

import sys

from kanidm_mail_sender.exitcodes import ExitCode
from tests.helpers import run


async def test_the_sandbox_mails_both_messages_and_says_nothing_deprecated() -> None:
    code, out, err = await run(
        [sys.executable, "-c", "from kanidm_mail_sender.sandbox.cli import main; main()"]
    )
    text = out + err
    assert code == ExitCode.OK, text
    assert "all 2 messages were mailed and marked sent in Kanidm" in text
    assert text.count("Subject: ") == 2
    assert text.count("mail.accepted component=engine.sending ") == 2
    assert "deprecat" not in text.lower()
