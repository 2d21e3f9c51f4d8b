"""Logging: structlog to stderr, readable text by default or JSON lines when asked."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = [
    "TextRenderer",
    "Timestamp",
    "configure_logging",
    "get_logger",
    "printable",
    "redact_secrets",
]

_SECRET_KEYS = frozenset({"token", "password", "mail_password", "authorization", "secret"})


def get_logger(module: str) -> Any:
    """The logger of one module: every line it writes names the part of the daemon that wrote
    it, as ``component`` (the module's path in the package, e.g. ``engine.sending``)."""
    return structlog.get_logger(component=module.removeprefix("kanidm_mail_sender."))


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A last line of defence: no value under a secret-sounding key ever reaches the output."""
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "[redacted]"
    return event_dict


class Timestamp:
    """ISO 8601 UTC time with microseconds; the date part is formatted once per second
    (structlog's TimeStamper builds a datetime for every event)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Add ``timestamp`` to the event."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._prefix = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
            )
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


# Left raw by json.dumps(ensure_ascii=False), yet able to forge or hide text on a terminal:
# DEL, C1 controls, line separators, zero-width and bidirectional overrides. One range for
# the log renderer and for the operator commands' tables.
_HIDDEN = "\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069"
_BARE = re.compile(rf'[^\s"=\\\x00-\x1f{_HIDDEN}]+')
_UNSAFE = re.compile(f"[{_HIDDEN}]")


# For a terminal: every C0 control but the line break, DEL, C1, and the same invisible and
# bidirectional characters. ESC, BEL and C1 start sequences that retitle a window, clear the
# screen, hide rows or (OSC 52) write the clipboard.
_TERMINAL = re.compile(f"[\x00-\x09\x0b-\x1f{_HIDDEN}]")


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` safe to print on an operator's terminal: each control, invisible or
    bidirectional character as its escape (``\\x1b``, ``\\u202e``); line breaks kept only with
    ``newlines`` (a whole table, not one cell of it)."""
    escaped = _TERMINAL.sub(_escape, text)
    return escaped if newlines else escaped.replace("\n", "\\n")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _value(value: Any) -> str:
    """A value as it goes into a text line: bare when plain, else quoted with every control
    character escaped (Kanidm data such as display names reaches the log)."""
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text):
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


class TextRenderer:
    """``time level event key=value ...``, values quoted only when they need it.

    A third of the CPU of structlog's ConsoleRenderer; at hundreds of mails a second, with
    a line per accepted mail, the renderer is a noticeable share of the daemon's work.
    """

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
        """Render one event as one line (plus a traceback, if any, on the lines after)."""
        timestamp = event_dict.pop("timestamp", "")
        level = event_dict.pop("level", "")
        event = event_dict.pop("event", "")
        trace = event_dict.pop("exception", None)
        line = " ".join(
            [
                f"{timestamp} {level:<7} {event}",
                *(f"{key}={_value(value)}" for key, value in event_dict.items()),
            ]
        )
        return f"{line}\n{trace}" if trace else line


def configure_logging(*, debug: bool, json: bool, stream: TextIO | None = None) -> None:
    """Configure structlog once, from the CLI."""
    renderer: Any = structlog.processors.JSONRenderer() if json else TextRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            Timestamp(),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.INFO
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the stdlib; keep them quiet unless debugging.
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for name in ("httpx", "httpcore", "aiosmtplib", "asyncio"):
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.WARNING)
