"""Relays as operators have them: Kanidm 1.10 bare hosts, OAuth 2.0 (XOAUTH2) with each grant
against a real token endpoint and an XOAUTH2-only relay, and sending limits at a real relay.
The limits' parsing and counting are in tests/core/test_ratelimit.py, the OAuth keys in
tests/config/test_oauth.py."""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.integrations.base_client import OAuthError
from structlog.testing import capture_logs

from kanidm_mail_sender.config.loading import load_mail_config
from kanidm_mail_sender.config.preflight import Identity
from kanidm_mail_sender.errors import RelayMisconfigured, RelayUnavailable
from kanidm_mail_sender.exitcodes import ExitCode
from kanidm_mail_sender.ops.oneshot import run_check
from kanidm_mail_sender.sandbox.certs import Certs
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn
from kanidm_mail_sender.sandbox.oauth_server import (
    ServiceAccountKey,
    TokenEndpoint,
    make_service_account,
)
from kanidm_mail_sender.sandbox.smtp_server import SmtpStandIn
from kanidm_mail_sender.smtp.oauth import classify_token_error
from tests.helpers import Harness, journal_counts, wait_for

MAILBOX = "idm@example.com"
SECRET = "secret-1"
REFRESH = "refresh-token-of-idm"


# --- pure decisions -------------------------------------------------------------------------


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://auth.test/token")
    return httpx.HTTPStatusError(
        "x", request=request, response=httpx.Response(status, request=request)
    )


@pytest.mark.parametrize(
    ("exc", "kind", "fragment"),
    [
        (OAuthError("invalid_client", "bad secret"), RelayMisconfigured, "client secret"),
        (OAuthError("invalid_grant"), RelayMisconfigured, "refresh token was revoked"),
        (OAuthError("unauthorized_client"), RelayMisconfigured, "domain-wide delegation"),
        (OAuthError("temporarily_unavailable"), RelayMisconfigured, "mail_oauth2_"),
        (_status_error(503), RelayUnavailable, "answered 503"),
        (_status_error(429), RelayUnavailable, "answered 429"),
        (_status_error(404), RelayMisconfigured, "mail_oauth2_token_url"),
        (httpx.ConnectTimeout("slow"), RelayUnavailable, "in time"),
        (httpx.ConnectError("refused"), RelayUnavailable, "cannot reach"),
        (ValueError("not JSON"), RelayUnavailable, "unusable"),
    ],
)
def test_token_errors_are_relay_wide(exc: BaseException, kind: type, fragment: str) -> None:
    error = classify_token_error(exc, "https://auth.test/token")
    assert type(error) is kind
    assert fragment in str(error)


def test_an_oauth_endpoint_s_words_are_kept_short_and_without_our_secrets() -> None:
    """They reach the log, status.json and ``status``: an endpoint echoing the request
    (client secret, refresh token) must not carry them there."""
    said = f"bad request client_secret={SECRET} refresh={REFRESH} trace " + "x" * 5000
    error = classify_token_error(
        OAuthError("invalid_client", said), "https://auth.test/token", (SECRET, REFRESH)
    )
    text = str(error)
    assert SECRET not in text
    assert REFRESH not in text
    assert "client_secret=[redacted]" in text
    assert len(text) < 600


# --- Kanidm 1.10 relays ---------------------------------------------------------------------


def test_bare_host_is_read_as_kanidm_1_10_did(
    config_files: Callable[..., tuple[Path, Path]],
) -> None:
    _, mail = config_files(mail_relay="smtp.example.com")
    loaded = load_mail_config(mail, environ={})
    relay = loaded.config.relay
    assert (relay.host, relay.port, relay.implicit_tls) == ("smtp.example.com", 465, True)
    assert any('write mail_relay = "smtps://smtp.example.com:465"' in w for w in loaded.warnings)


async def test_bare_host_and_port_delivers_over_implicit_tls(
    relay_factory: Callable[..., Awaitable[SmtpStandIn]],
    harness_factory: Callable[..., Harness],
    kanidm: KanidmStandIn,
) -> None:
    relay = await relay_factory("smtps")
    harness = harness_factory(relay=relay, mail_relay=f"127.0.0.1:{relay.port}")
    kanidm.queue_test_message("bob@example.com")
    await harness.cycle()
    assert [mail.rcpt_tos for mail in relay.mails] == [["bob@example.com"]]
    assert kanidm.unsent_count() == 0


# --- OAuth 2.0 against a token endpoint and an XOAUTH2-only relay ----------------------------


@pytest.fixture
async def endpoint(certs: Certs, tmp_path: Path) -> AsyncIterator[TokenEndpoint]:
    token_endpoint = TokenEndpoint(
        lifetime=2.0,
        refresh_tokens={REFRESH},
        rotate_refresh_tokens=True,
        service_account=make_service_account(tmp_path / "service-account.json"),
        subject=MAILBOX,
    )
    await token_endpoint.start(certs.server_context())
    yield token_endpoint
    await token_endpoint.stop()


@pytest.fixture
async def oauth_relay(
    relay_factory: Callable[..., Awaitable[SmtpStandIn]], endpoint: TokenEndpoint
) -> SmtpStandIn:
    return await relay_factory("starttls", auth=None, xoauth2=endpoint.valid)


def grant_keys(grant: str, endpoint: TokenEndpoint) -> dict[str, Any]:
    """The mail-sender keys for ``grant`` against the stand-in endpoint."""
    common = {"mail_username": MAILBOX, "mail_oauth2_token_url": endpoint.url}
    if grant == "client_credentials":
        return {
            **common,
            "mail_oauth2_client_id": "client-1",
            "mail_oauth2_client_secret": SECRET,
            "mail_oauth2_scope": "https://outlook.office365.com/.default",
        }
    if grant == "refresh_token":
        return {
            **common,
            "mail_oauth2_client_id": "client-1",
            "mail_oauth2_client_secret": SECRET,
            "mail_oauth2_refresh_token": REFRESH,
            "mail_oauth2_scope": "https://mail.google.com/",
        }
    account = endpoint.service_account
    assert isinstance(account, ServiceAccountKey)
    return {
        **common,
        "mail_oauth2_provider": "google",
        "mail_oauth2_service_account_file": str(account.path),
    }


GRANTS = ["client_credentials", "refresh_token", "service_account"]


@pytest.mark.parametrize("grant", GRANTS)
async def test_drain_across_token_lifetimes_delivers_each_once(
    grant: str,
    endpoint: TokenEndpoint,
    oauth_relay: SmtpStandIn,
    harness_factory: Callable[..., Harness],
    kanidm: KanidmStandIn,
) -> None:
    count = 240
    ids = [kanidm.queue_test_message(f"user{i}@example.com") for i in range(count)]
    # Sessions end every 15 mails and mails take a while, so the drain outlives several
    # tokens and new connections authenticate with each; halfway, every token is revoked.
    oauth_relay.faults.close_after_mails = 15
    oauth_relay.faults.stall_in_data = 0.03

    def revoke_halfway(mail: Any) -> None:
        if oauth_relay.count == count // 2:
            endpoint.revoke_all()

    oauth_relay.on_mail = revoke_halfway
    harness = harness_factory(
        relay=oauth_relay, mail_max_connections=2, **grant_keys(grant, endpoint)
    )
    started = time.monotonic()
    while kanidm.unsent_count() and time.monotonic() - started < 60:
        await harness.cycle()
    arrived = Counter(mail.rcpt_tos[0] for mail in oauth_relay.mails)
    assert len(arrived) == count
    assert set(arrived.values()) == {1}
    assert sorted(kanidm.sent()) == sorted(ids)
    assert {mail.authenticated_as for mail in oauth_relay.mails} == {MAILBOX}
    # Several tokens were issued over the drain (the first, the one after the revocation, and
    # at least one renewed on expiry), and the revocation was answered by a renewal.
    assert len(endpoint.grants) >= 3
    assert oauth_relay.auth_failures >= 1
    assert journal_counts(harness.journal) == {"accepted": count}


async def test_refused_client_pauses_without_spending_attempts_then_recovers(
    endpoint: TokenEndpoint,
    oauth_relay: SmtpStandIn,
    harness_factory: Callable[..., Harness],
    kanidm: KanidmStandIn,
) -> None:
    endpoint.error = "invalid_client"
    kanidm.queue_test_message("carol@example.com")
    harness = harness_factory(relay=oauth_relay, **grant_keys("client_credentials", endpoint))
    with capture_logs() as logs:
        await harness.engine.poll()
        await wait_for(lambda: harness.engine.health.pauses >= 2, timeout=10)
    paused = [entry for entry in logs if entry["event"] == "relay.paused"]
    assert len(paused) == 1
    assert "invalid_client" in paused[0]["error"]
    assert "mail_oauth2_client_secret" in paused[0]["error"]
    assert SECRET not in str(logs)
    assert journal_counts(harness.journal) == {}  # no attempt spent, nothing deferred
    assert oauth_relay.mails == []
    endpoint.error = None
    await wait_for(lambda: len(oauth_relay.mails) == 1, timeout=10)
    await harness.engine.idle()
    assert kanidm.unsent_count() == 0


async def test_token_endpoint_outage_pauses_then_recovers(
    endpoint: TokenEndpoint,
    oauth_relay: SmtpStandIn,
    harness_factory: Callable[..., Harness],
    kanidm: KanidmStandIn,
) -> None:
    endpoint.status = 503
    kanidm.queue_test_message("dave@example.com")
    harness = harness_factory(relay=oauth_relay, **grant_keys("refresh_token", endpoint))
    await harness.engine.poll()
    await wait_for(lambda: harness.engine.health.paused, timeout=10)
    assert "answered 503" in harness.engine.health.last_error
    endpoint.status = None
    await wait_for(lambda: len(oauth_relay.mails) == 1, timeout=10)
    assert journal_counts(harness.journal).get("deferred") is None


@pytest.mark.parametrize("grant", GRANTS)
async def test_check_obtains_a_token_and_authenticates(
    grant: str,
    endpoint: TokenEndpoint,
    oauth_relay: SmtpStandIn,
    config_files: Callable[..., tuple[Path, Path]],
) -> None:
    client, mail = config_files(relay=oauth_relay, **grant_keys(grant, endpoint))
    out = io.StringIO()
    code = await run_check(
        client, mail, environ={}, ids=Identity.current(), out=out, skip_root_check=True
    )
    text = out.getvalue()
    assert code == ExitCode.OK, text
    assert "ok   oauth2:" in text
    assert "lives 2 s, scopes granted:" in text
    assert f"authenticated as {MAILBOX} (XOAUTH2)" in text
    assert SECRET not in text
    assert REFRESH not in text


async def test_check_names_the_cause_of_a_refused_grant(
    endpoint: TokenEndpoint,
    oauth_relay: SmtpStandIn,
    config_files: Callable[..., tuple[Path, Path]],
) -> None:
    keys = grant_keys("refresh_token", endpoint)
    keys["mail_oauth2_refresh_token"] = "revoked-long-ago"
    client, mail = config_files(relay=oauth_relay, **keys)
    out = io.StringIO()
    code = await run_check(
        client, mail, environ={}, ids=Identity.current(), out=out, skip_root_check=True
    )
    assert code == ExitCode.NOT_DONE  # the relay side, as a start that cannot send
    assert "FAIL oauth2: refresh token grant: the OAuth token endpoint" in out.getvalue()
    assert "replace mail_oauth2_refresh_token" in out.getvalue()
    assert "revoked-long-ago" not in out.getvalue()


async def test_secrets_never_reach_the_output_even_at_debug(
    endpoint: TokenEndpoint,
    oauth_relay: SmtpStandIn,
    config_files: Callable[..., tuple[Path, Path]],
    daemon_command: Callable[..., list[str]],
    kanidm: KanidmStandIn,
) -> None:
    for i in range(5):
        kanidm.queue_test_message(f"erin{i}@example.com")
    client, mail = config_files(relay=oauth_relay, **grant_keys("refresh_token", endpoint))
    process = await asyncio.create_subprocess_exec(
        *daemon_command(client, mail, "-d"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for(lambda: kanidm.unsent_count() == 0, timeout=30)
    finally:
        process.terminate()
        out, err = await asyncio.wait_for(process.communicate(), 15)
    output = (out + err).decode()
    assert "mail.accepted" in output
    assert "oauth2.token" in output  # the debug line is there, without the token
    issued = list(endpoint.issued)
    assert issued
    for secret in [SECRET, REFRESH, *issued, *endpoint.refresh_tokens]:
        assert secret not in output


# --- sending limits -------------------------------------------------------------------------


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of ``times`` inside one half-open window of ``window`` seconds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_no_second_at_the_relay_holds_more_than_the_limit(
    relay: SmtpStandIn, harness_factory: Callable[..., Harness], kanidm: KanidmStandIn
) -> None:
    for i in range(40):
        kanidm.queue_test_message(f"frank{i}@example.com")
    harness = harness_factory(mail_rate_limit=["10/second"], mail_max_connections=4)
    started = time.monotonic()
    with capture_logs() as logs:
        while kanidm.unsent_count() and time.monotonic() - started < 30:
            await harness.cycle()
    assert len(relay.mails) == 40
    assert most_in_any_window([mail.received_at for mail in relay.mails], 1.0) <= 10
    assert len([e for e in logs if e["event"] == "relay.rate_limited"]) == 1
    waited = harness.engine.metrics.registry.get_sample_value(
        "kanidm_mail_sender_rate_limit_wait_seconds_total"
    )
    assert waited is not None
    assert waited > 0
    assert journal_counts(harness.journal) == {"accepted": 40}


async def test_a_restart_keeps_the_days_count(
    relay: SmtpStandIn, harness_factory: Callable[..., Harness], kanidm: KanidmStandIn
) -> None:
    for i in range(8):
        kanidm.queue_test_message(f"grace{i}@example.com")
    first = harness_factory(mail_rate_limit=["5/day"])
    for _ in range(3):
        await first.engine.poll()
        await asyncio.sleep(0.2)
    assert len(relay.mails) == 5
    await first.engine.shutdown(0.5)
    await first.smtp.close()
    first.journal.close()
    second = harness_factory(mail_rate_limit=["5/day"])
    await second.engine.poll()
    await asyncio.sleep(0.5)
    assert len(relay.mails) == 5  # the day's five went before the restart
    waiting = second.engine.metrics.registry.get_sample_value(
        "kanidm_mail_sender_rate_limited_sends"
    )
    assert waiting is not None
    assert waiting >= 1
    assert kanidm.unsent_count() == 3
