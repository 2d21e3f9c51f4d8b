"""Pure SMTP reply decisions: whose problem a refusal is, and what it means for delivery.

A reply code alone does not say whose problem it is. The stage it answers says most: a reply
to RCPT is about that recipient (as Postfix reads it), a reply to MAIL FROM is about our sender
or account, and a reply after DATA is about this mail unless its words say it is about us (our
rate, our quota, our right to send as this From address). Where the words name the party
(Postfix's "Sender address rejected", Microsoft 365's "SendAsDenied", SES's "Daily message
quota exceeded"), they win over the stage. What one reply cannot tell, the evidence across
destinations can (:mod:`kanidm_mail_sender.engine.evidence`).
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Cause",
    "Receipt",
    "Refusal",
    "Stage",
    "Verdict",
    "read_reply",
    "redact_reply",
    "reply_shape",
]


class Stage(enum.Enum):
    """The step of the SMTP dialogue that a reply answered."""

    CONNECT = "connect"  # TCP, greeting, EHLO, STARTTLS, TLS handshake
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


class Verdict(enum.Enum):
    """What a failed reply means for delivery."""

    DEFER = "defer"  # transient for this destination: retry it later, one attempt spent
    REJECT = "reject"  # permanent for this destination: never retried
    RELAY_DOWN = "relay_down"  # nothing can be sent now: pause all sending, no attempt spent
    THROTTLE = "throttle"  # the relay wants fewer or slower mails: slow down, no attempt spent


class Cause(enum.Enum):
    """Whose problem a refusal is, as far as its stage and words tell."""

    RECIPIENT = "recipient"  # one address: unknown, full, refused by policy
    MESSAGE = "message"  # this mail: content, size, or nothing more specific was said
    RATE = "rate"  # our sending rate or concurrency
    QUOTA = "quota"  # our account's sending quota (daily limits, credits)
    SENDER = "sender"  # our From address or account may not send
    RELAY = "relay"  # the relay itself: closing, local error, unreachable, credentials


# The words that name a cause, most specific first; each is matched case-insensitively
# anywhere in the reply text. The sources of the wordings are in tests/core/test_replies.py.
_SENDER_WORDS = re.compile(
    r"send ?as ?denied|not (?:allowed|authori[sz]ed|permitted) to send"
    r"|permissions? to send|sender address rejected|client host rejected"
    r"|helo command rejected|sender identity|unverified sender|sender .{0,40}not verified"
    r"|unauthenticated senders?|not authenticated to send|account (?:is )?(?:suspended|disabled)"
    r"|mail relay denied|from address .{0,40}(?:not|doesn.t) match|address is not verified"
    r"|identities failed the check|activate your .{0,20}account",
    re.I,
)
_ACCOUNT_QUOTA_WORDS = re.compile(
    r"submissionquotaexceeded|sending (?:limit|quota)|message quota|daily .{0,20}(?:limit|quota)"
    r"|credits? exceeded|maximum credits",
    re.I,
)
_RECIPIENT_WORDS = re.compile(
    r"over quota|mailbox (?:is )?full|user unknown|no such user|does not exist"
    r"|recipient address rejected|mailbox unavailable|unknown recipient",
    re.I,
)
_RATE_WORDS = re.compile(
    r"rate limit|ratelimit|too many (?:messages|connections|concurrent|sessions|mails|recipients)"
    r"|throttl|slow down|server busy|unusual rate|sending rate|sender rate|thread limit"
    r"|try again later, sending",
    re.I,
)
_QUOTA_WORDS = re.compile(r"quota|limit exceeded|limit reached", re.I)
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")

_STAGE_CAUSE = {
    Stage.CONNECT: Cause.RELAY,
    Stage.AUTH: Cause.RELAY,
    Stage.MAIL: Cause.SENDER,
    Stage.RCPT: Cause.RECIPIENT,
    Stage.DATA: Cause.MESSAGE,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refusing reply, read once where it arrived: the stage, the code, the text (already
    redacted), and what it means."""

    stage: Stage
    code: int
    text: str
    verdict: Verdict
    cause: Cause

    @property
    def shape(self) -> str:
        """The reply with addresses, ids and numbers removed: the same for every mail when
        the refusal is about us, different per address when it is about them."""
        return reply_shape(self.code, self.text)

    @property
    def per_address(self) -> bool:
        """Whether the enhanced code is one of address or mailbox status (X.1.x, X.2.x)."""
        enhanced = _ENHANCED.match(self.text)
        return enhanced is not None and enhanced.group(2) in ("1", "2")

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass(frozen=True, slots=True)
class Receipt:
    """The relay's acceptance of one mail: its final reply and the queue id in it, if any."""

    reply: str
    queue_id: str | None


def _cause(stage: Stage, code: int, text: str) -> Cause:
    if _SENDER_WORDS.search(text):
        return Cause.RATE if _RATE_WORDS.search(text) else Cause.SENDER
    if _ACCOUNT_QUOTA_WORDS.search(text):
        return Cause.QUOTA
    enhanced = _ENHANCED.match(text)
    if enhanced is not None and enhanced.group(2) in ("1", "2"):
        return Cause.RECIPIENT  # address or mailbox status, RFC 3463
    if _RECIPIENT_WORDS.search(text):
        return Cause.RECIPIENT
    if _RATE_WORDS.search(text):
        return Cause.RATE
    if _QUOTA_WORDS.search(text):
        return Cause.QUOTA
    if code == 421:
        return Cause.RELAY  # the relay is closing the channel
    return _STAGE_CAUSE[stage]


def _verdict(stage: Stage, code: int, cause: Cause) -> Verdict:
    if cause is Cause.RATE:
        return Verdict.THROTTLE
    if stage in (Stage.CONNECT, Stage.AUTH, Stage.MAIL) or code == 421:
        return Verdict.RELAY_DOWN  # every message alike, or the channel is closing
    if cause in (Cause.SENDER, Cause.QUOTA):
        return Verdict.RELAY_DOWN  # named as about us: refusing mail after mail would burn
    return Verdict.DEFER if 400 <= code < 500 else Verdict.REJECT


def _rcpt_cause(code: int, text: str) -> Cause:
    """A reply to RCPT is about that recipient, rate words or not (Gmail's "receiving mail at
    a rate", a per-recipient 4.7.1 policy), unless its words name us: Postfix reports sender
    and client restrictions at RCPT ("Sender address rejected", "Client host rejected"), and
    a daily sending quota is ours wherever it is said. Only evidence across several
    destinations makes any other RCPT refusal ours (:func:`evidence.judge`)."""
    if code == 421:
        return Cause.RATE if _RATE_WORDS.search(text) else Cause.RELAY
    if _SENDER_WORDS.search(text):
        return Cause.RATE if _RATE_WORDS.search(text) else Cause.SENDER
    if _ACCOUNT_QUOTA_WORDS.search(text):
        return Cause.QUOTA
    return Cause.RECIPIENT


def read_reply(stage: Stage, code: int, text: str) -> Refusal:
    """The refusal a reply of ``code`` (not 2xx/3xx) to ``stage`` is, and its verdict."""
    cause = _rcpt_cause(code, text) if stage is Stage.RCPT else _cause(stage, code, text)
    return Refusal(stage, code, text, _verdict(stage, code, cause), cause)


_ADDRESS = re.compile(r"<[^>]*>|[^\s<>]+@[^\s<>]+")
_TOKEN = re.compile(r"\[[^\]]*\]|\([^)]*\d[^)]*\)|\b[\w.+/=-]*\d[\w.+/=-]*\b")
_SPACE = re.compile(r"\s+")


def reply_shape(code: int, text: str) -> str:
    """``code`` and ``text`` with addresses, bracketed ids and words holding digits taken out
    (the enhanced code is kept), lower-cased and with single spaces."""
    enhanced = _ENHANCED.match(text)
    head = enhanced.group(0).strip() if enhanced else ""
    rest = text[enhanced.end() :] if enhanced else text
    rest = _TOKEN.sub("#", _ADDRESS.sub("@", rest))
    return _SPACE.sub(" ", f"{code} {head} {rest}".lower()).strip()


# A run of base64 with a digit, "+" or "/" in it, or padding: plain long words of letters
# ("SendAsDeniedException") stay readable.
_LONG_BASE64 = re.compile(r"(?=[A-Za-z]*[0-9+/]|[A-Za-z0-9+/]{16,}=)[A-Za-z0-9+/]{16,}={0,2}")


def redact_reply(text: str, secrets: Iterable[str] = (), *, base64_runs: bool = True) -> str:
    """``text`` without anything that looks like an echo of our AUTH exchange.

    Some relays quote the client's AUTH line in their error; that line is the base64 of the
    password. Every given secret (plain and base64) is replaced, and with ``base64_runs``
    every long base64 run (not for an acceptance, whose queue ids look like them).
    """
    for secret in secrets:
        if not secret:
            continue
        encoded = base64.b64encode(secret.encode()).decode()
        text = text.replace(secret, "[redacted]").replace(encoded, "[redacted]")
    return _LONG_BASE64.sub("[redacted]", text) if base64_runs else text
