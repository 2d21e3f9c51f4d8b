"""An OAuth 2.0 token endpoint stand-in over HTTPS: client credentials, refresh tokens and
RFC 7523 JWT bearer assertions (signature checked with the service account's public key),
short-lived tokens, and scripted error answers."""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from kanidm_mail_sender.runtime.httpserver import HttpServer, Request, Response, serve

__all__ = ["ServiceAccountKey", "TokenEndpoint", "make_service_account"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class ServiceAccountKey:
    """A Google-style service-account key file and the public half that verifies it."""

    path: Path
    client_email: str
    public_pem: bytes


def make_service_account(
    path: Path, client_email: str = "sender@project.iam.gserviceaccount.com"
) -> ServiceAccountKey:
    """Write a service-account JSON key file with a new RSA key at ``path``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "project",
                "private_key_id": "key-1",
                "private_key": private_pem,
                "client_email": client_email,
                "client_id": "1234567890",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ServiceAccountKey(path, client_email, public)


@dataclass
class _Issued:
    subject: str
    expires: float
    scope: str


@dataclass
class TokenEndpoint:
    """Issues tokens living ``lifetime`` seconds; ``valid()`` is what the relay asks."""

    lifetime: float = 2.0
    clients: dict[str, str] = field(default_factory=lambda: {"client-1": "secret-1"})
    refresh_tokens: set[str] = field(default_factory=set)
    rotate_refresh_tokens: bool = False
    service_account: ServiceAccountKey | None = None
    subject: str = "idm@example.com"  # the mailbox the tokens are for
    #: While set, every request is answered with this OAuth error (or HTTP status).
    error: str | None = None
    status: int | None = None
    grants: list[str] = field(default_factory=list)
    issued: dict[str, _Issued] = field(default_factory=dict)
    _server: HttpServer | None = None

    @property
    def url(self) -> str:
        """The token URL."""
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.port}/token"

    def valid(self, user: str, token: str) -> bool:
        """Whether ``token`` is current and issued for ``user``."""
        issued = self.issued.get(token)
        return issued is not None and issued.subject == user and time.monotonic() < issued.expires

    def revoke_all(self) -> None:
        """Every token issued so far stops working (as a provider revoking a session)."""
        self.issued.clear()

    async def start(self, context: ssl.SSLContext) -> None:
        """Listen on a free loopback port with TLS."""
        self._server = await serve(self._handle, "127.0.0.1", 0, ssl_context=context)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            await self._server.close()
            self._server = None

    def _answer_error(self, error: str, status: int = 400) -> Response:
        body = {"error": error, "error_description": f"stand-in says {error}"}
        return Response(status, json.dumps(body).encode())

    async def _handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != "/token":
            return Response(404, b'{"error":"not_found"}')
        if self.status is not None:
            return Response(self.status, b"<html>unavailable</html>", "text/html")
        if self.error is not None:
            return self._answer_error(self.error, 401 if self.error == "invalid_client" else 400)
        form = {key: values[0] for key, values in parse_qs(request.body.decode()).items()}
        grant = form.get("grant_type", "")
        self.grants.append(grant)
        if grant == JWT_BEARER:
            return self._jwt_bearer(form)
        client_id, secret = self._client(request, form)
        if grant == "client_credentials":
            if client_id is None or self.clients.get(client_id) != secret:
                return self._answer_error("invalid_client", 401)
            return self._issue(self.subject, form.get("scope", ""))
        if grant == "refresh_token":
            if client_id not in self.clients or (secret and self.clients[client_id] != secret):
                return self._answer_error("invalid_client", 401)
            if form.get("refresh_token") not in self.refresh_tokens:
                return self._answer_error("invalid_grant")
            extra = {}
            if self.rotate_refresh_tokens:
                extra["refresh_token"] = secrets.token_urlsafe(24)
                self.refresh_tokens.add(extra["refresh_token"])
            return self._issue(self.subject, form.get("scope", ""), extra)
        return self._answer_error("unsupported_grant_type")

    @staticmethod
    def _client(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            return user, password
        return form.get("client_id"), form.get("client_secret")

    def _jwt_bearer(self, form: dict[str, str]) -> Response:
        account = self.service_account
        if account is None:
            return self._answer_error("unsupported_grant_type")
        try:
            token = jwt.decode(
                form.get("assertion", ""),
                RSAKey.import_key(account.public_pem),
                algorithms=["RS256"],
            )
        except (JoseError, ValueError):
            return self._answer_error("invalid_grant")
        claims = token.claims
        now = time.time()
        if (
            claims.get("iss") != account.client_email
            or claims.get("aud") != self.url
            or not isinstance(claims.get("exp"), int)
            or claims["exp"] < now
            or claims.get("iat", now + 1) > now + 5
        ):
            return self._answer_error("invalid_grant")
        if claims.get("sub") != self.subject:
            return self._answer_error("unauthorized_client")
        return self._issue(str(claims["sub"]), str(claims.get("scope", "")))

    def _issue(self, subject: str, scope: str, extra: dict[str, str] | None = None) -> Response:
        value = secrets.token_urlsafe(32)
        self.issued[value] = _Issued(subject, time.monotonic() + self.lifetime, scope)
        body = {
            "access_token": value,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "scope": scope,
            **(extra or {}),
        }
        return Response(200, json.dumps(body).encode())
