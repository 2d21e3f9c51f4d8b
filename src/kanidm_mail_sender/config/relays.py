"""Relay addresses as the config writes them: Kanidm 1.11's ``smtp://`` and ``smtps://``
URLs, and 1.10's bare ``host[:port]`` (implicit TLS, the port honoured)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["RelayEndpoint", "parse_relay_url"]


@dataclass(frozen=True)
class RelayEndpoint:
    """Where and how to reach the SMTP relay, derived from ``mail_relay``."""

    host: str
    port: int
    implicit_tls: bool
    helo_name: str | None = None
    url_username: str | None = None
    url_password: str | None = field(default=None, repr=False)
    legacy: bool = False  # written as Kanidm 1.10 did: a bare host, implicit TLS

    def describe(self) -> str:
        """The relay as an operator would write it, without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{host}:{self.port}"


_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _is_host(host: str) -> bool:
    """A DNS name, an IPv4 address or (bracketed in the value) an IPv6 address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        return 0 < len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)
    return True


def _legacy_relay(value: str) -> RelayEndpoint:
    """Kanidm 1.10's ``mail_relay``: a bare ``host`` or ``host:port``, implicit TLS (465)."""
    parts = urlsplit(f"smtps://{value}")
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(
            "must be a URL such as smtps://smtp.example.com:465 or smtp://smtp.example.com:587"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number between 1 and 65535") from None
    host = parts.hostname or ""
    if port == 0 or not _is_host(host):
        raise ValueError(
            "is neither a URL (smtps://host:465, smtp://host:587) nor a host name as "
            "Kanidm 1.10 allowed"
        )
    return RelayEndpoint(host=host, port=port or 465, implicit_tls=True, legacy=True)


def parse_relay_url(url: str) -> RelayEndpoint:
    """``smtp://`` = STARTTLS required (port 587); ``smtps://`` = implicit TLS (port 465).

    A bare ``host`` or ``host:port`` is read as Kanidm 1.10 did: implicit TLS, port 465.
    """
    if "://" not in url:
        return _legacy_relay(url.strip())
    parts = urlsplit(url.strip())
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(
            f"the scheme must be smtp:// (STARTTLS required) or smtps:// (implicit TLS), "
            f"not {parts.scheme + '://' if parts.scheme else 'missing'}"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number between 0 and 65535") from None
    if not parts.hostname:
        raise ValueError("the URL has no host name")
    implicit = parts.scheme == "smtps"
    helo = unquote(parts.path.strip("/")) or None
    # As upstream (lettre): credentials in the URL only count when a password is present.
    user = unquote(parts.username) if parts.username and parts.password else None
    password = unquote(parts.password) if parts.password else None
    return RelayEndpoint(
        host=parts.hostname,
        port=port or (465 if implicit else 587),
        implicit_tls=implicit,
        helo_name=helo,
        url_username=user,
        url_password=password if user else None,
    )
