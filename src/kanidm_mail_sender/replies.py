"""Pure SMTP reply decisions: which failures belong to one recipient and which to the relay.

The stage a reply answers matters as much as its code: a 5xx to RCPT is about that address,
a 5xx to MAIL FROM is about us (our sender or our account) and would fail every message alike.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Iterable

__all__ = ["Stage", "Verdict", "classify_reply", "is_throttle", "redact_reply"]


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


_THROTTLE_TEXT = re.compile(r"rate|throttl|too many|slow down|try again later, sending", re.I)
_GREYLIST = re.compile(r"grey ?list|gray ?list", re.I)
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def is_throttle(code: int, text: str) -> bool:
    """Whether a 4xx reply asks us to slow down (rate limits) rather than refusing this mail."""
    if not 400 <= code < 500 or _GREYLIST.search(text):
        return False  # greylisting is about one sender/recipient pair, not our rate
    if _THROTTLE_TEXT.search(text) is not None:
        return True
    # 4.7.x is policy, rate limits mostly; a bare 421 4.7.0 is a relay closing on us.
    enhanced = _ENHANCED.match(text)
    return (
        code != 421
        and enhanced is not None
        and enhanced.group(1) == "4"
        and enhanced.group(2) == "7"
    )


def classify_reply(stage: Stage, code: int, text: str) -> Verdict:
    """The verdict for a reply of ``code`` (not 2xx/3xx) to ``stage``."""
    if stage in (Stage.CONNECT, Stage.AUTH):
        return Verdict.RELAY_DOWN
    if is_throttle(code, text):
        return Verdict.THROTTLE
    if code == 421 or stage is Stage.MAIL:
        # 421 closes the channel whatever it answered; MAIL FROM concerns our sender or
        # account, the same for every message.
        return Verdict.RELAY_DOWN
    return Verdict.REJECT if 500 <= code < 600 else Verdict.DEFER


_LONG_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")


def redact_reply(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without anything that looks like an echo of our AUTH exchange.

    Some relays quote the client's AUTH line in their error; that line is the base64 of the
    password. Long base64 runs and every given secret (plain and base64) are replaced.
    """
    for secret in secrets:
        if not secret:
            continue
        encoded = base64.b64encode(secret.encode()).decode()
        text = text.replace(secret, "[redacted]").replace(encoded, "[redacted]")
    return _LONG_BASE64.sub("[redacted]", text)
