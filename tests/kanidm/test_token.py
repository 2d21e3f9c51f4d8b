"""What a token says of its scope, and what an ``extAccessCheck`` says a reader may set."""

from __future__ import annotations

from typing import Any

import pytest

from kanidm_mail_sender.kanidm.token import TokenScope, may_modify, token_scope
from tests.helpers import api_token, jws


@pytest.mark.parametrize(
    ("token", "scope"),
    [
        (api_token(purpose="readwrite"), TokenScope.READ_WRITE),
        (api_token(purpose="readonly"), TokenScope.READ_ONLY),
        (api_token(purpose="synchronise"), TokenScope.SYNCHRONISE),
        (api_token(), TokenScope.READ_ONLY),  # Kanidm's default when purpose is left out
        (api_token(purpose="admin"), TokenScope.UNKNOWN),
        (api_token(purpose="unknown"), TokenScope.UNKNOWN),
        (jws(bytes(range(16))), TokenScope.UNKNOWN),  # compact: the session id only
        (jws(b'{"purpose": "readwrite"}'), TokenScope.UNKNOWN),  # not an API token
        (jws(b"[1, 2]"), TokenScope.UNKNOWN),
        (jws(b"[" * 100_000), TokenScope.UNKNOWN),
        ("not-a-jws", TokenScope.UNKNOWN),
        ("a.!!!.c", TokenScope.UNKNOWN),
        ("", TokenScope.UNKNOWN),
    ],
    ids=lambda value: value[:12] if isinstance(value, str) else str(value),
)
def test_token_scope(token: str, scope: TokenScope) -> None:
    assert token_scope(token) is scope


@pytest.mark.parametrize(
    ("resource", "allowed"),
    [
        ({"extAccessCheck": {"modifyPresent": {"Allow": ["sent_at"]}}}, True),
        ({"extAccessCheck": {"modifyPresent": "Grant"}}, True),
        ({"extAccessCheck": {"modifyPresent": "Deny"}}, False),
        ({"extAccessCheck": {"modifyPresent": {"Allow": ["send_after"]}}}, False),
        ({"extAccessCheck": {"modifyPresent": {"Allow": []}}}, False),
        ({"extAccessCheck": {"modifyPresent": {"Allow": "sent_at"}}}, None),
        ({"extAccessCheck": {"modifyPresent": 7}}, None),
        ({"extAccessCheck": {}}, None),
        ({"extAccessCheck": None}, None),
        ({}, None),  # an older Kanidm
        ([], None),
    ],
)
def test_may_modify(resource: Any, allowed: bool | None) -> None:
    assert may_modify(resource) is allowed
