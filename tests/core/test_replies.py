"""Refusals as real relays word them: the classifier, reply shapes and redaction.

Each row of REAL_REPLIES is a reply a provider documents or is widely seen sending, at the
stage it answers. Sources, by provider:
- Postfix: smtpd(8) and postconf(5) reply texts (reject_unlisted_recipient, relay
  restrictions, smtpd_sender_login_maps, smtpd_delay_reject reports sender and client
  restrictions at RCPT), postgrey, policyd-rate-limit.
- Exim: the Exim specification (smtp_accept_max, ratelimit ACL examples, routing failures).
- Microsoft 365: Microsoft Learn, "Fix email delivery issues for error code 5.2.0"
  (SendAsDenied, SubmissionQuotaExceeded), 5.7.57/5.7.60/5.7.139 and 4.7.500 pages.
- Gmail: Google Workspace Admin Help, "SMTP errors and codes".
- Amazon SES: "Amazon SES SMTP issues" and "SMTP response codes" in the SES developer guide.
- Mailgun and SendGrid: their help centres' SMTP error pages.
"""

from __future__ import annotations

import pytest

from kanidm_mail_sender.core.replies import (
    Cause,
    Stage,
    Verdict,
    read_reply,
    redact_reply,
    reply_shape,
)

C, A, M, R, D = Stage.CONNECT, Stage.AUTH, Stage.MAIL, Stage.RCPT, Stage.DATA
DEFER, REJECT, DOWN, SLOW = Verdict.DEFER, Verdict.REJECT, Verdict.RELAY_DOWN, Verdict.THROTTLE

REAL_REPLIES = [
    # provider, stage, code, text, verdict, cause
    (
        "postfix",
        R,
        550,
        "5.1.1 <bob@example.com>: Recipient address rejected: User unknown in "
        "virtual mailbox table",
        REJECT,
        Cause.RECIPIENT,
    ),
    (
        "postfix",
        R,
        450,
        "4.1.1 <bob@example.com>: Recipient address rejected: unverified "
        "address: host mx.example.com said: 450 try later",
        DEFER,
        Cause.RECIPIENT,
    ),
    ("postfix", R, 554, "5.7.1 <bob@example.org>: Relay access denied", REJECT, Cause.RECIPIENT),
    (
        "postfix",
        R,
        451,
        "4.7.1 <carol@example.com>: Recipient address rejected: Policy rejection, try again later",
        DEFER,
        Cause.RECIPIENT,
    ),
    (
        "postgrey",
        R,
        450,
        "4.2.0 <bob@example.com>: Recipient address rejected: Greylisted, "
        "see http://postgrey.schweikert.ch/help/example.com.html",
        DEFER,
        Cause.RECIPIENT,
    ),
    (
        "postfix",
        R,
        553,
        "5.7.1 <noreply@idm.example.com>: Sender address rejected: not owned by user mailer",
        DOWN,
        Cause.SENDER,
    ),
    (
        "postfix",
        R,
        450,
        "4.7.1 Client host rejected: cannot find your hostname, [192.0.2.7]",
        DOWN,
        Cause.SENDER,
    ),
    (
        "postfix",
        M,
        553,
        "5.7.1 <noreply@idm.example.com>: Sender address rejected: not logged in",
        DOWN,
        Cause.SENDER,
    ),
    ("postfix", M, 452, "4.3.1 Insufficient system storage", DOWN, Cause.SENDER),
    ("postfix", D, 552, "5.3.4 Message size exceeds fixed limit", REJECT, Cause.MESSAGE),
    ("postfix", D, 451, "4.3.0 Error: queue file write error", DEFER, Cause.MESSAGE),
    ("postfix", C, 421, "4.3.2 All server ports are busy", DOWN, Cause.RELAY),
    ("policyd-rate-limit", M, 450, "4.7.1 Rate limit reach, retry later", SLOW, Cause.RATE),
    ("policyd-rate-limit", R, 450, "4.7.1 Rate limit reach, retry later", DEFER, Cause.RECIPIENT),
    ("exim", R, 550, "Unrouteable address", REJECT, Cause.RECIPIENT),
    ("exim", R, 451, "Temporary local problem - please try later", DEFER, Cause.RECIPIENT),
    ("exim", D, 550, "Administrative prohibition", REJECT, Cause.MESSAGE),
    (
        "exim",
        C,
        421,
        "Too many concurrent SMTP connections; please try again later.",
        SLOW,
        Cause.RATE,
    ),
    ("exim", M, 451, "Sender rate overlimit - 123.4 / 1h / per_rcpt", SLOW, Cause.RATE),
    (
        "microsoft365",
        D,
        554,
        "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException."
        "MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with "
        "message Cannot submit message. 0.35250:0E00D38B, 1.36674:0A000000",
        DOWN,
        Cause.SENDER,
    ),
    (
        "microsoft365",
        D,
        554,
        "5.2.0 STOREDRV.Submission.Exception:"
        "SubmissionQuotaExceededException; Failed to process message due to a permanent exception "
        "with message Cannot submit message.",
        DOWN,
        Cause.QUOTA,
    ),
    (
        "microsoft365",
        D,
        554,
        "5.2.252 SendAsDenied; mailer@contoso.com not allowed to send as "
        "noreply@contoso.com; STOREDRV.Submit; subscription not found",
        DOWN,
        Cause.SENDER,
    ),
    (
        "microsoft365",
        M,
        550,
        "5.7.60 SMTP; Client does not have permissions to send as this sender",
        DOWN,
        Cause.SENDER,
    ),
    (
        "microsoft365",
        M,
        530,
        "5.7.57 Client not authenticated to send mail. Error: 535 5.7.139 "
        "Authentication unsuccessful",
        DOWN,
        Cause.SENDER,
    ),
    (
        "microsoft365",
        A,
        535,
        "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
        DOWN,
        Cause.RELAY,
    ),
    (
        "microsoft365",
        D,
        421,
        "4.7.500 Server busy. Please try again later from [192.0.2.7]. (S77714)",
        SLOW,
        Cause.RATE,
    ),
    (
        "microsoft365",
        D,
        432,
        "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
        SLOW,
        Cause.RATE,
    ),
    (
        "microsoft365",
        R,
        550,
        "5.4.1 Recipient address rejected: Access denied. AS(201806281)",
        REJECT,
        Cause.RECIPIENT,
    ),
    (
        "gmail",
        R,
        550,
        "5.1.1 The email account that you tried to reach does not exist.",
        REJECT,
        Cause.RECIPIENT,
    ),
    (
        "gmail",
        R,
        450,
        "4.2.1 The user you are trying to contact is receiving mail at a rate "
        "that prevents additional messages from being delivered.",
        DEFER,
        Cause.RECIPIENT,
    ),
    (
        "gmail",
        R,
        452,
        "4.2.2 The recipient's inbox is out of storage space.",
        DEFER,
        Cause.RECIPIENT,
    ),
    (
        "gmail",
        R,
        550,
        "5.2.1 The email account that you tried to reach is disabled.",
        REJECT,
        Cause.RECIPIENT,
    ),
    (
        "gmail",
        D,
        550,
        "5.4.5 Daily user sending limit exceeded. For more information on Gmail "
        "sending limits go to https://support.google.com/a/answer/166852",
        DOWN,
        Cause.QUOTA,
    ),
    ("gmail", D, 550, "5.4.5 Daily sending quota exceeded.", DOWN, Cause.QUOTA),
    ("gmail", D, 421, "4.7.0 Try again later, closing connection.", DOWN, Cause.RELAY),
    (
        "gmail",
        D,
        421,
        "4.7.28 Our system has detected an unusual rate of unsolicited mail "
        "originating from your IP address.",
        SLOW,
        Cause.RATE,
    ),
    (
        "gmail",
        D,
        552,
        "5.3.4 Your message exceeded Google's message size limits.",
        REJECT,
        Cause.MESSAGE,
    ),
    (
        "gmail",
        D,
        550,
        "5.7.1 [192.0.2.7] Our system has detected that this message is likely unsolicited mail.",
        REJECT,
        Cause.MESSAGE,
    ),
    ("gmail", A, 535, "5.7.8 Username and Password not accepted.", DOWN, Cause.RELAY),
    ("gmail", M, 530, "5.7.0 Authentication Required.", DOWN, Cause.SENDER),
    ("ses", D, 454, "Throttling failure: Maximum sending rate exceeded.", SLOW, Cause.RATE),
    ("ses", D, 454, "Throttling failure: Daily message quota exceeded.", DOWN, Cause.QUOTA),
    (
        "ses",
        D,
        554,
        "Message rejected: Email address is not verified. The following identities "
        "failed the check in region EU-WEST-1: noreply@idm.example.com",
        DOWN,
        Cause.SENDER,
    ),
    ("ses", D, 454, "Temporary service failure", DEFER, Cause.MESSAGE),
    ("ses", A, 535, "Authentication Credentials Invalid", DOWN, Cause.RELAY),
    (
        "mailgun",
        R,
        554,
        "5.7.1 Sandbox subdomains are for test purposes only. Please add your "
        "own domain or add the address to authorized recipients in Account Settings.",
        REJECT,
        Cause.RECIPIENT,
    ),
    (
        "mailgun",
        D,
        550,
        "Please activate your Mailgun account. Check your inbox or log in to "
        "your control panel to resend the activation email.",
        DOWN,
        Cause.SENDER,
    ),
    ("sendgrid", A, 535, "Authentication failed: Bad username / password", DOWN, Cause.RELAY),
    ("sendgrid", M, 451, "Authentication failed: Maximum credits exceeded", DOWN, Cause.QUOTA),
    (
        "sendgrid",
        D,
        550,
        "The from address does not match a verified Sender Identity. Mail "
        "cannot be sent until this error is resolved.",
        DOWN,
        Cause.SENDER,
    ),
    ("sendgrid", M, 550, "Unauthenticated senders not allowed", DOWN, Cause.SENDER),
]


@pytest.mark.parametrize(
    ("provider", "stage", "code", "text", "verdict", "cause"),
    REAL_REPLIES,
    ids=[f"{row[0]}-{row[1].value}-{row[2]}-{i}" for i, row in enumerate(REAL_REPLIES)],
)
def test_real_replies(
    provider: str, stage: Stage, code: int, text: str, verdict: Verdict, cause: Cause
) -> None:
    refusal = read_reply(stage, code, text)
    assert (refusal.verdict, refusal.cause) == (verdict, cause)


def test_the_table_is_broad() -> None:
    providers = {row[0] for row in REAL_REPLIES}
    assert len(REAL_REPLIES) >= 30
    assert {"postfix", "exim", "microsoft365", "gmail", "ses", "mailgun", "sendgrid"} <= providers


@pytest.mark.parametrize(
    ("stage", "code", "text", "verdict"),
    [
        (C, 421, "4.3.2 try later", DOWN),
        (C, 554, "5.7.1 no service", DOWN),
        (M, 451, "4.3.0 local error", DOWN),
        (M, 450, "4.7.1 too many messages, slow down", SLOW),
        (R, 451, "4.7.0 throttled", DEFER),  # rate words at RCPT are still that recipient's
        (R, 421, "4.7.0 closing", DOWN),
        (R, 421, "4.7.0 too many connections, rate limited", SLOW),
        (R, 450, "4.7.1 Client host rejected: rate limit", SLOW),
        (R, 452, "4.2.2 Daily sending quota exceeded", DOWN),
        (D, 552, "5.2.2 <bob@example.com>: mailbox over quota", REJECT),
        (D, 451, "4.4.1 try later", DEFER),
        (D, 550, "5.7.1 rate limit reached for today", SLOW),
    ],
)
def test_stage_first_then_words(stage: Stage, code: int, text: str, verdict: Verdict) -> None:
    assert read_reply(stage, code, text).verdict is verdict


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("550 5.1.1 <a@x.org>: User unknown", "550 5.1.1 <b@y.org>: User unknown", True),
        (
            "554 5.2.0 Exception; 0.35250:0E00D38B [AM0PR01]",
            "554 5.2.0 Exception; 1.36674:0A000000 [DB8PR02]",
            True,
        ),
        ("550 5.7.1 queued id 4FzKq1 refused", "550 5.7.1 queued id 9QbxX2 refused", True),
        ("550 5.7.1 content refused", "550 5.7.0 content refused", False),
        ("550 5.7.1 content refused", "554 5.7.1 content refused", False),
        ("550 5.7.1 content refused", "550 5.7.1 sender refused", False),
    ],
)
def test_reply_shape(first: str, second: str, same: bool) -> None:
    def shape(reply: str) -> str:
        code, text = reply.split(" ", 1)
        return reply_shape(int(code), text)

    assert (shape(first) == shape(second)) is same


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("5.7.8 bad credentials", (), "5.7.8 bad credentials"),
        ("5.7.8 AUTH PLAIN AG1haWxlcgBzM2NyZXQ= failed", (), "5.7.8 AUTH PLAIN [redacted] failed"),
        ("wrong password s3cret", ("s3cret",), "wrong password [redacted]"),
        (
            "5.2.0 SendAsDeniedException.MapiException",
            (),
            "5.2.0 SendAsDeniedException.MapiException",
        ),
        ("token ya29a0AfH6SMBx3kLmQpZ failed", (), "token [redacted] failed"),
        ("echo czNjcmV0", ("s3cret",), "echo [redacted]"),
        ("queued as 4FzKq1", (), "queued as 4FzKq1"),
    ],
)
def test_reply_redaction(text: str, secrets: tuple[str, ...], expected: str) -> None:
    assert redact_reply(text, secrets) == expected
