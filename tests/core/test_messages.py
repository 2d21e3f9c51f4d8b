"""Parsing Kanidm's ready list: each entry alone, streamed in chunks of any size."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from kanidm_mail_sender.core.messages import (
    CredentialResetV1,
    MalformedMessage,
    TestMessageV1,
    UnknownTemplate,
    parse_resource,
)
from kanidm_mail_sender.kanidm.readylist import ReadyListParser

# Example 2.5A of the spec: exactly what Kanidm serialises.
READY: dict[str, Any] = {
    "schemas": [],
    "totalResults": 2,
    "resources": [
        {
            "schemas": [],
            "id": "0a9318dc-920f-4944-9ce4-91b4322b5dad",
            "class": ["object", "outbound_message"],
            "delete_after": "2026-02-25T02:49:43.163072419Z",
            "mail_destination": [{"primary": True, "value": "ellie@example.com"}],
            "message_template": {"TestMessageV1": {"display_name": "Ellie Example"}},
            "send_after": "2026-02-18T02:49:43.163072419Z",
        },
        {
            "schemas": [],
            "id": "6f1c2d4e-8a3b-4c5d-9e7f-0123456789ab",
            "class": ["object", "outbound_message"],
            "delete_after": "2026-02-25T03:00:05.5Z",
            "mail_destination": [
                {"primary": False, "value": "alice.backup@example.org"},
                {"primary": True, "value": "alice@example.com"},
            ],
            "message_template": {
                "CredentialResetV1": {
                    "display_name": "Alice Example",
                    "intent_id": "k4p9x-2hzat-vqe7c-83wbj",
                    "expiry_time": 1771387205,
                }
            },
            "send_after": "2026-02-18T03:00:05.5Z",
        },
    ],
}


def stream(body: bytes, size: int) -> list[Any]:
    parser = ReadyListParser()
    out: list[Any] = []
    for start in range(0, len(body), size):
        out.extend(parser.feed(body[start : start + size]))
    out.extend(parser.feed(b"", final=True))
    return out


@pytest.mark.parametrize("size", [1, 2, 5, 13, 64, 4096])
def test_streamed_in_any_chunking(size: int) -> None:
    body = json.dumps(READY, indent=2).encode()
    resources = stream(body, size)
    assert resources == READY["resources"]


def test_both_templates_parse() -> None:
    test, reset = (parse_resource(r) for r in READY["resources"])
    assert test.id == UUID("0a9318dc-920f-4944-9ce4-91b4322b5dad")
    assert test.template == TestMessageV1("Ellie Example")
    assert test.destinations == ("ellie@example.com",)
    assert reset.destinations == ("alice.backup@example.org", "alice@example.com")
    assert isinstance(reset.template, CredentialResetV1)
    assert reset.template.expiry_time == datetime(2026, 2, 18, 4, 0, 5, tzinfo=UTC)
    assert reset.send_after is not None


def test_empty_queue_and_key_order() -> None:
    body = b'{"resources":[],"totalResults":0,"schemas":[]}'
    assert stream(body, 3) == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"schemas":[],"resources":[{"id":1}',
        b"[1,2]",
        b'{"resources":{}}',
        b'{"schemas":["a"',
    ],
)
def test_truncated_or_invalid_bodies_raise(body: bytes) -> None:
    with pytest.raises(ValueError, match="ready messages"):
        stream(body, 4)


def test_extra_keys_are_tolerated() -> None:
    resource = dict(READY["resources"][0], extAccessCheck=True, future_attr=["x"])
    resource["message_template"] = {"TestMessageV1": {"display_name": "E", "new_field": 1}}
    assert parse_resource(resource).template == TestMessageV1("E")


def test_duplicate_destinations_are_sent_once() -> None:
    resource = dict(
        READY["resources"][0],
        mail_destination=[
            {"primary": True, "value": "a@example.com"},
            {"primary": False, "value": "a@example.com"},
        ],
    )
    assert parse_resource(resource).destinations == ("a@example.com",)


@pytest.mark.parametrize(
    ("change", "error", "fragment"),
    [
        (
            {"message_template": {"PasswordExpiryV1": {"display_name": "x"}}},
            UnknownTemplate,
            "unknown template variant 'PasswordExpiryV1'",
        ),
        ({"id": "not-a-uuid"}, MalformedMessage, "not a UUID"),
        (
            {
                "message_template": {
                    "CredentialResetV1": {
                        "display_name": "x",
                        "intent_id": "i",
                        "expiry_time": "soon",
                    }
                }
            },
            MalformedMessage,
            "expiry_time",
        ),
        ({"mail_destination": "a@b.c"}, MalformedMessage, "not a list"),
        ({"message_template": None}, MalformedMessage, "one-key object"),
    ],
)
def test_bad_entries_raise_with_their_id(
    change: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    resource = dict(READY["resources"][0], **change)
    with pytest.raises(error, match=fragment):
        parse_resource(resource)
