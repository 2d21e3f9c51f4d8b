"""Kanidm's queued messages as they arrive from ``GET /scim/v1/Message/_ready``.

Each resource is parsed on its own, so one unknown template or malformed entry is reported
and skipped while the rest of the queue goes on (upstream fails the whole poll).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from kanidm_mail_sender.core.states import storable

__all__ = [
    "TEMPLATE_KINDS",
    "CredentialResetV1",
    "MalformedMessage",
    "QueuedMessage",
    "Template",
    "TestMessageV1",
    "UnknownTemplate",
    "parse_resource",
]


class MalformedMessage(ValueError):
    """A queue entry does not have the shape Kanidm documents."""

    def __init__(self, message_id: str | None, reason: str) -> None:
        super().__init__(f"message {message_id or '(no id)'}: {reason}")
        self.message_id = message_id
        self.reason = reason

    @property
    def key(self) -> str:
        """What identifies this report, for logging it once."""
        return f"{self.message_id}:{self.reason}"


class UnknownTemplate(MalformedMessage):
    """A queue entry uses a template variant this version does not know."""


@dataclass(frozen=True, slots=True)
class TestMessageV1:
    """Kanidm's ``TestMessageV1``: checks that mail reaches a person."""

    __test__ = False  # not a pytest test class
    display_name: str
    kind = "test_message_v1"


@dataclass(frozen=True, slots=True)
class CredentialResetV1:
    """Kanidm's ``CredentialResetV1``: a link to reset (or revoke) a credential update."""

    display_name: str
    intent_id: str
    expiry_time: datetime
    kind = "credential_reset_v1"


Template = TestMessageV1 | CredentialResetV1
TEMPLATE_KINDS = (TestMessageV1.kind, CredentialResetV1.kind)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One ready message: its id, its destinations (deduplicated, in order) and template."""

    id: UUID
    destinations: tuple[str, ...]
    template: Template
    send_after: datetime | None = None
    language: str | None = None  # BCP 47, when Kanidm says which the person reads


def _text(value: Any, what: str, message_id: str | None) -> str:
    if not isinstance(value, str):
        raise MalformedMessage(message_id, f"{what} is not a string")
    # A JSON escape can carry a lone surrogate, which no encoder (SQLite, SMTP, logs) takes.
    return storable(value)


def _template(value: Any, message_id: str) -> Template:
    if not isinstance(value, dict) or len(value) != 1:
        raise MalformedMessage(message_id, "message_template is not a one-key object")
    ((variant, fields),) = value.items()
    if not isinstance(fields, dict):
        raise MalformedMessage(message_id, f"template {variant} has no field object")
    if variant == "TestMessageV1":
        return TestMessageV1(_text(fields.get("display_name"), "display_name", message_id))
    if variant == "CredentialResetV1":
        expiry = fields.get("expiry_time")
        if not isinstance(expiry, int) or isinstance(expiry, bool):
            raise MalformedMessage(message_id, "expiry_time is not an integer of Unix seconds")
        try:
            expires = datetime.fromtimestamp(expiry, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise MalformedMessage(message_id, f"expiry_time {expiry} is out of range") from None
        return CredentialResetV1(
            display_name=_text(fields.get("display_name"), "display_name", message_id),
            intent_id=_text(fields.get("intent_id"), "intent_id", message_id),
            expiry_time=expires,
        )
    raise UnknownTemplate(message_id, f"unknown template variant {variant!r}")


def _destinations(value: Any, message_id: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MalformedMessage(message_id, "mail_destination is not a list")
    seen: dict[str, None] = {}
    for item in value:
        if not isinstance(item, dict):
            raise MalformedMessage(message_id, "a mail_destination entry is not an object")
        seen.setdefault(_text(item.get("value"), "mail_destination value", message_id), None)
    return tuple(seen)


def parse_resource(resource: Any) -> QueuedMessage:
    """Turn one ``resources`` element into a QueuedMessage, or raise MalformedMessage."""
    if not isinstance(resource, dict):
        raise MalformedMessage(None, "resource is not an object")
    raw_id = resource.get("id")
    if not isinstance(raw_id, str):
        raise MalformedMessage(None, "resource has no id")
    try:
        message_id = UUID(raw_id)
    except ValueError:
        raise MalformedMessage(raw_id, "id is not a UUID") from None
    if "message_template" not in resource:
        raise MalformedMessage(raw_id, "message_template is missing")
    return QueuedMessage(
        id=message_id,
        destinations=_destinations(resource.get("mail_destination"), raw_id),
        template=_template(resource["message_template"], raw_id),
        send_after=_timestamp(resource.get("send_after")),
        language=_language(resource.get("language")),
    )


# A BCP 47 tag in the shape of common ones; anything else is as if none were given.
_LANGUAGE = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8}){0,4}")


def _language(value: Any) -> str | None:
    """The language a message carries: a field Kanidm's messaging design plans, read here
    already; a value that is no tag is ignored rather than failing the message."""
    if isinstance(value, str) and _LANGUAGE.fullmatch(value):
        return value
    return None


def _timestamp(value: Any) -> datetime | None:
    """An RFC 3339 time as Kanidm writes it (up to 9 fractional digits), or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
