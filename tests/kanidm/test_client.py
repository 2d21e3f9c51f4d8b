"""Narrow unit tests of the Kanidm HTTP client with respx: the exact requests and error mapping."""

from __future__ import annotations

from uuid import UUID

import httpx
import pytest
import respx

from kanidm_mail_sender import __version__
from kanidm_mail_sender.config.settings import ClientConfig
from kanidm_mail_sender.errors import (
    KanidmAuthError,
    KanidmNotFound,
    KanidmResponseError,
    KanidmUnavailable,
)
from kanidm_mail_sender.kanidm.client import KanidmClient, build_http_client
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn

MID = UUID("0a9318dc-920f-4944-9ce4-91b4322b5dad")
BASE = "https://idm.example.com"


def client(router: respx.MockRouter) -> KanidmClient:
    config = ClientConfig(uri=f"{BASE}/some/path")
    return KanidmClient(
        build_http_client(
            config, "the-token", timeout=2, transport=httpx.MockTransport(router.async_handler)
        )
    )


async def test_mark_sent_is_a_post_of_null_with_bearer_and_user_agent() -> None:
    router = respx.MockRouter(assert_all_called=True)
    route = router.post(f"{BASE}/scim/v1/Message/{MID}/_sent").respond(200, content=b"null")
    await client(router).mark_sent(MID)
    request = route.calls.last.request
    assert request.content == b"null"
    assert request.headers["Authorization"] == "Bearer the-token"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"kanidm-mail-sender/{__version__}"


async def test_ready_is_listed_with_a_get_at_the_server_root() -> None:
    router = respx.MockRouter(assert_all_called=True)
    body = {"schemas": [], "totalResults": 1, "resources": [{"id": str(MID)}]}
    router.get(f"{BASE}/scim/v1/Message/_ready").respond(200, json=body)
    assert [r async for r in client(router).ready()] == [{"id": str(MID)}]


@pytest.mark.parametrize(
    ("status", "body", "error", "fragment"),
    [
        (401, '"sessionexpired"', KanidmAuthError, "expired or been revoked"),
        (403, '"accessdenied"', KanidmAuthError, "idm_message_senders"),
        (404, '"nomatchingentries"', KanidmNotFound, "404"),
        (500, '"resourcelimit"', KanidmResponseError, '500 "resourcelimit"'),
        (201, "null", KanidmResponseError, "201"),
    ],
)
async def test_statuses_map_to_our_errors(
    status: int, body: str, error: type[Exception], fragment: str
) -> None:
    router = respx.MockRouter()
    router.post(f"{BASE}/scim/v1/Message/{MID}/_sent").respond(status, content=body.encode())
    with pytest.raises(error, match=fragment):
        await client(router).mark_sent(MID)


async def test_network_errors_and_timeouts_are_unavailable() -> None:
    router = respx.MockRouter()
    router.post(f"{BASE}/scim/v1/Message/{MID}/_sent").mock(side_effect=httpx.ConnectError)
    router.get(f"{BASE}/scim/v1/Message/_ready").mock(side_effect=httpx.ReadTimeout)
    with pytest.raises(KanidmUnavailable):
        await client(router).mark_sent(MID)
    with pytest.raises(KanidmUnavailable, match="timed out"):
        [r async for r in client(router).ready()]


async def test_undecodable_ready_list_is_a_response_error() -> None:
    router = respx.MockRouter()
    router.get(f"{BASE}/scim/v1/Message/_ready").respond(200, content=b"<html>")
    with pytest.raises(KanidmResponseError, match="ready messages"):
        [r async for r in client(router).ready()]


async def test_unknown_ca_is_rejected(kanidm: KanidmStandIn) -> None:
    """Against the real HTTPS stand-in: without its CA the certificate is refused."""
    http = build_http_client(ClientConfig(uri=kanidm.url), "t", timeout=5)
    with pytest.raises(KanidmUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await KanidmClient(http).mark_sent(MID)
    await http.aclose()
    assert kanidm.mark_calls[MID] == 0
