"""OAuth 2.0 access tokens for SASL XOAUTH2, obtained with Authlib's httpx clients.

One ``TokenSource`` serves every relay connection: the token is cached, renewed ahead of its
expiry by one task (only while it is being used), and renewed at once, single-flight, when
the relay rejects it. Token endpoint failures become relay-wide errors: a refused client or
grant pauses sending with one loud error naming the likely cause; 5xx and timeouts pause with
backoff. Neither costs a message an attempt.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

with warnings.catch_warnings():
    # Authlib 1.9 prefers the httpx2 fork and warns when it falls back to httpx; httpx is the
    # client this project uses everywhere, so the fallback is what we want. (Authlib sets an
    # "always" filter for its warnings on import: ours must come after it.)
    import authlib.deprecate  # noqa: F401

    warnings.filterwarnings("ignore", "The httpx module is deprecated", DeprecationWarning)
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.httpx_client import AsyncAssertionClient, AsyncOAuth2Client
from joserfc.jwk import RSAKey

from kanidm_mail_sender.config.oauth import Grant, OAuth2Settings
from kanidm_mail_sender.core.replies import redact_reply
from kanidm_mail_sender.errors import RelayError, RelayMisconfigured, RelayUnavailable
from kanidm_mail_sender.logs import get_logger

__all__ = ["AccessToken", "TokenSource", "classify_token_error"]

log = get_logger(__name__)

_RENEW_AHEAD_MAX = 300.0  # renew at most this long before expiry...
_RENEW_AHEAD_SHARE = 0.2  # ...and at most this share of the lifetime before it
_DEFAULT_LIFETIME = 3600.0  # when the endpoint does not say (RFC 6749 makes expires_in optional)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """One access token and when (monotonic seconds) it stops being used."""

    value: str = field(repr=False)
    lifetime: float
    renew_at: float
    expires_at: float
    scope: str | None


_CAUSES = {
    "invalid_client": "the endpoint does not know the client or its secret: check "
    "mail_oauth2_client_id and mail_oauth2_client_secret (an expired client secret is the "
    "usual cause) or the service-account key",
    "invalid_grant": "the grant was refused: the refresh token was revoked or has expired "
    "(sign in again and replace mail_oauth2_refresh_token), or mail_username is not a user "
    "the service account may act for",
    "unauthorized_client": "the client may not use this grant: for Google, add the client id "
    "and scope under domain-wide delegation; for Microsoft, grant the application "
    "SMTP.SendAsApp with admin consent and register its service principal in Exchange",
    "invalid_scope": "the scope is refused: check mail_oauth2_scope",
}


def classify_token_error(exc: BaseException, url: str, secrets: tuple[str, ...] = ()) -> RelayError:
    """Map a failed token request to a relay-wide error (never a destination's failure).
    The endpoint's own words are kept short and without our secrets or token-like runs:
    they go to the log, ``status.json`` and ``status``."""
    where = f"the OAuth token endpoint {url}"
    if isinstance(exc, OAuthError):
        code = redact_reply(str(exc.error), secrets)[:80]
        said = redact_reply(exc.description, secrets)[:300] if exc.description else ""
        description = f" ({said})" if said else ""
        cause = _CAUSES.get(code, "check the mail_oauth2_* keys against the provider's setup")
        return RelayMisconfigured(f"{where} refused: {code}{description}; {cause}")
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        if status >= 500 or status == 429:
            return RelayUnavailable(f"{where} answered {status}; trying again after a pause")
        return RelayMisconfigured(
            f"{where} answered {status} without an OAuth error; check mail_oauth2_token_url"
        )
    if isinstance(exc, httpx.TimeoutException):
        return RelayUnavailable(f"{where} did not answer in time")
    if isinstance(exc, httpx.TransportError):
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, ssl.SSLError):
                return RelayMisconfigured(f"TLS with {where} failed: {seen}")
            seen = seen.__cause__ or seen.__context__
        return RelayUnavailable(f"cannot reach {where}: {exc}")
    return RelayUnavailable(f"{where} gave an unusable answer: {exc}")


def _client(settings: OAuth2Settings, tls: ssl.SSLContext, timeout: float) -> httpx.AsyncClient:
    options: dict[str, Any] = {"verify": tls, "timeout": timeout, "follow_redirects": False}
    if settings.grant is Grant.JWT_BEARER:
        account = settings.service_account
        assert account is not None
        header = {"alg": "RS256"}
        if account.private_key_id:
            header["kid"] = account.private_key_id
        # Google wants the scope as a claim of the signed assertion, not as a form field.
        claims = {"scope": settings.scope} if settings.scope else None
        client: httpx.AsyncClient = AsyncAssertionClient(
            token_endpoint=settings.token_url,
            issuer=account.client_email,
            subject=settings.username,
            audience=settings.token_url,
            claims=claims,
            key=RSAKey.import_key(account.private_key),
            header=header,
            **options,
        )
        return client
    return AsyncOAuth2Client(  # type: ignore[no-any-return]
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        # In the form, which every provider accepts (Basic needs form-encoding of the secret).
        token_endpoint_auth_method="client_secret_post" if settings.client_secret else "none",
        scope=settings.scope,
        **options,
    )


class TokenSource:
    """The current access token for ``settings``, shared by every relay connection."""

    def __init__(
        self,
        settings: OAuth2Settings,
        *,
        tls_context: ssl.SSLContext,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._http = _client(settings, tls_context, timeout)
        self._clock = clock
        self._token: AccessToken | None = None
        self._refresh_token = settings.refresh_token
        self._lock = asyncio.Lock()
        self._used = False
        self._renewer: asyncio.Task[None] | None = None
        # The latest token values, for redaction of relay replies.
        self._recent: deque[str] = deque(maxlen=4)

    async def current(self) -> AccessToken:
        """A token that is not about to expire; fetched when there is none."""
        self._used = True
        token = self._token
        if token is not None and self._clock() < token.expires_at:
            return token
        async with self._lock:
            token = self._token
            if token is None or self._clock() >= token.expires_at:
                token = await self._fetch()
            return token

    async def renew(self, rejected: AccessToken) -> AccessToken:
        """A fresh token after the relay refused ``rejected``; one fetch however many ask."""
        async with self._lock:
            token = self._token
            if token is None or token is rejected:
                token = await self._fetch()
            return token

    def secrets(self) -> tuple[str, ...]:
        """Every secret a relay or endpoint answer could echo."""
        return (*self.settings.secrets(), *self._recent)

    async def _fetch(self) -> AccessToken:
        started = self._clock()
        try:
            data = await self._request()
            value = data["access_token"]
            if not isinstance(value, str) or not value:
                raise ValueError("no access_token in the answer")
            lifetime = float(data.get("expires_in") or _DEFAULT_LIFETIME)
            if not math.isfinite(lifetime) or lifetime <= 0:
                raise ValueError(f"expires_in is {data.get('expires_in')!r}")
        except (OAuthError, httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise classify_token_error(
                exc, self.settings.token_url, self.settings.secrets()
            ) from None
        rotated = data.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            self._refresh_token = rotated  # kept in memory; the old one stays valid for a while
        ahead = min(_RENEW_AHEAD_MAX, lifetime * _RENEW_AHEAD_SHARE)
        # A token within a tenth of its lifetime of expiry is not handed out any more.
        token = AccessToken(
            value=value,
            lifetime=lifetime,
            renew_at=started + lifetime - ahead,
            expires_at=started + lifetime - ahead / 2,
            scope=data.get("scope") if isinstance(data.get("scope"), str) else None,
        )
        self._token = token
        self._recent.append(value)
        log.debug(
            "oauth2.token",
            grant=self.settings.grant.value,
            lifetime_seconds=round(lifetime),
            scope=token.scope,
        )
        self._schedule_renewal()
        return token

    async def _request(self) -> dict[str, Any]:
        settings, http = self.settings, self._http
        if isinstance(http, AsyncAssertionClient):
            answer = await http.refresh_token()
        elif settings.grant is Grant.REFRESH_TOKEN:
            assert isinstance(http, AsyncOAuth2Client)
            answer = await http.refresh_token(settings.token_url, refresh_token=self._refresh_token)
        else:
            assert isinstance(http, AsyncOAuth2Client)
            answer = await http.fetch_token(settings.token_url, grant_type="client_credentials")
        return dict(answer)

    def _schedule_renewal(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_ahead())

    async def _renew_ahead(self) -> None:
        """Renew before expiry while the token is in use; an idle daemon lets it lapse."""
        while (token := self._token) is not None:
            await asyncio.sleep(max(0.0, token.renew_at - self._clock()))
            if self._token is not token:
                continue  # renewed meanwhile (a rejection)
            if not self._used:
                return  # unused since the last fetch: the next current() fetches
            self._used = False
            async with self._lock:
                if self._token is not token:
                    continue
                try:
                    await self._fetch()
                except RelayError as exc:
                    # The token in hand may still work; the next current() after its expiry
                    # tries again and reports through the relay's health.
                    log.warning("oauth2.renew_failed", error=str(exc))
                    return

    async def aclose(self) -> None:
        """Stop the renewal task and close the HTTP client."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.wait([self._renewer], timeout=1.0)
        await self._http.aclose()
