"""What an API token says of itself, and what Kanidm says a token may do to a message.

A read-only token lists the queue but every mark-sent gets 403, and that stops the daemon
after its first mail; ``--check`` finds it without changing anything in Kanidm: from the
token's own payload when it is Kanidm's full JSON form, else from the ``extAccessCheck`` of a
ready message. A mark-sent of an unknown id cannot tell: Kanidm looks the entry up before it
checks access, so that is 404 for any token.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from typing import Any

__all__ = ["TokenScope", "may_modify", "token_scope"]

SENT_AT = "sent_at"


class TokenScope(enum.StrEnum):
    """The purpose an API token was issued for (Kanidm's ``ApiTokenPurpose``)."""

    READ_WRITE = "readwrite"
    READ_ONLY = "readonly"
    SYNCHRONISE = "synchronise"
    UNKNOWN = "unknown"  # the compact form (only a session id), or not a token we can read


def token_scope(token: str) -> TokenScope:
    """The token's scope from its (unverified) JWS payload; Kanidm's own default when the
    JSON form leaves ``purpose`` out is read-only."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return TokenScope.UNKNOWN
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return TokenScope.UNKNOWN  # a compact token's payload is 16 bytes, not JSON
    if not isinstance(data, dict) or "token_id" not in data:
        return TokenScope.UNKNOWN
    purpose = data.get("purpose", TokenScope.READ_ONLY.value)
    try:
        return TokenScope(purpose) if purpose != TokenScope.UNKNOWN else TokenScope.UNKNOWN
    except ValueError:
        return TokenScope.UNKNOWN


def may_modify(resource: Any, attribute: str = SENT_AT) -> bool | None:
    """Whether the ``extAccessCheck`` of a message resource lets its reader set
    ``attribute``; None when the resource carries none (an older Kanidm)."""
    check = resource.get("extAccessCheck") if isinstance(resource, dict) else None
    if not isinstance(check, dict) or "modifyPresent" not in check:
        return None
    access = check["modifyPresent"]
    if access == "Grant":
        return True
    if access == "Deny":
        return False
    if isinstance(access, dict) and isinstance(access.get("Allow"), list):
        return attribute in access["Allow"]
    return None
