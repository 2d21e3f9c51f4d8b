"""The two configuration files as models: Kanidm's client config (``-c``) and ours (``-m``),
each value validated and stored parsed (schedule, relay, listener, instance URL), and the
defaults they start from. Reading and loading the files is ``config.loading``'s."""

from __future__ import annotations

import re
import unicodedata
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    field_validator,
    model_validator,
)

from kanidm_mail_sender.config.oauth import KEYS as OAUTH2_KEYS
from kanidm_mail_sender.config.oauth import OAuth2Settings, oauth2_settings
from kanidm_mail_sender.config.relays import RelayEndpoint, parse_relay_url
from kanidm_mail_sender.core.addresses import check_address
from kanidm_mail_sender.core.defaults import (
    DEFAULT_LANGUAGE,
    RETRY_INITIAL_SECONDS,
    RETRY_MAX_SECONDS,
    SEND_WORKERS,
)
from kanidm_mail_sender.core.links import InstanceUrl
from kanidm_mail_sender.core.ratelimit import Rate, parse_rates
from kanidm_mail_sender.core.schedule import DEFAULT_SCHEDULE, Schedule, parse_schedule
from kanidm_mail_sender.core.zones import DEFAULT_TIMEZONE, zone_named

__all__ = [
    "DEFAULT_CLIENT_CONFIG",
    "DEFAULT_MAIL_CONFIG",
    "DEFAULT_STATE_DIR",
    "TEMPLATE_KEYS",
    "ClientConfig",
    "ListenAddress",
    "MailSenderConfig",
    "split_listen",
]

# The keys the templates are built from: a renderer's refusal names one of them.
TEMPLATE_KEYS = ("template_dir", "mail_language", "mail_catalog_dir")

DEFAULT_CLIENT_CONFIG = Path("/etc/kanidm/config")
DEFAULT_MAIL_CONFIG = Path("/etc/kanidm/mail-sender")
DEFAULT_STATE_DIR = Path("/var/lib/kanidm-mail-sender")


# BCP 47 in the shape of its common tags: a language, then script, region or variant.
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8}){0,4}")


def _parse_schedule(value: object) -> object:
    return parse_schedule(value) if isinstance(value, str) else value


def _parse_instance_url(value: object) -> object:
    return InstanceUrl(value) if isinstance(value, str) else value


def _parse_relay(value: object) -> object:
    return parse_relay_url(value) if isinstance(value, str) else value


def _parse_zone(value: object) -> object:
    return zone_named(value) if isinstance(value, str) else value


def _parse_listen(value: object) -> object:
    return split_listen(value) if isinstance(value, str) else value


def _header_safe(value: str) -> None:
    """Refuse what mail clients disagree on in a header: every C0 and C1 control (CR, LF,
    NUL, U+0085 NEXT LINE among them) and the Unicode line and paragraph separators."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            raise ValueError(
                f"contains U+{ord(char):04X} ({unicodedata.name(char, 'a control character')}); "
                "it goes into mail headers, where line breaks and controls are refused"
            )


class MailSenderConfig(BaseModel):
    """The mail-sender config file; upstream's keys first, then ours."""

    model_config = ConfigDict(extra="allow", frozen=True, arbitrary_types_allowed=True)

    token: SecretStr
    # Parsed where they enter, once: nobody reads these as text again.
    schedule: Annotated[Schedule, BeforeValidator(_parse_schedule)] = Field(
        default=DEFAULT_SCHEDULE, validate_default=True
    )
    instance_display_name: str
    instance_url: Annotated[InstanceUrl, BeforeValidator(_parse_instance_url)]
    mail_from_address: str
    mail_reply_to_address: str
    mail_relay: Annotated[RelayEndpoint, BeforeValidator(_parse_relay)]
    mail_username: str | None = None
    mail_password: SecretStr | None = None
    mail_connect_timeout_seconds: int = Field(default=15, ge=1, le=3600)
    # Ours, not upstream's.
    mail_timeout_seconds: float = Field(default=60, gt=0, le=3600)
    mail_max_connections: int = Field(default=SEND_WORKERS, ge=1, le=64)
    mail_ca_path: Path | None = None
    mail_helo_name: str | None = None
    http_timeout_seconds: float = Field(default=30, gt=0, le=3600)
    http_pipelining: StrictBool = True
    http_list_timeout_seconds: float = Field(default=120, gt=0, le=3600)
    http_list_max_mib: int = Field(default=256, ge=1, le=4096)
    state_dir: Path | None = None
    # > 0: a standby that sends only what has been ready this long (upstream's HA design).
    standby_delay_seconds: float = Field(default=0, ge=0, le=86400)
    # 5 s + the 2 s hard stop stays inside the 10 s that docker and podman stop wait by default.
    shutdown_grace_seconds: float = Field(default=5, ge=0, le=3600)
    retry_initial_seconds: float = Field(default=RETRY_INITIAL_SECONDS, gt=0, le=86400)
    retry_max_seconds: float = Field(default=RETRY_MAX_SECONDS, gt=0, le=7 * 86400)
    template_dir: Path | None = None
    # The mails' language (BCP 47) and the zone of the times in them (IANA), and a directory
    # of gettext catalogs that add a language or correct a shipped one.
    mail_catalog_dir: Path | None = None  # before mail_language, which is checked against it
    mail_language: str = DEFAULT_LANGUAGE
    mail_timezone: Annotated[tzinfo, BeforeValidator(_parse_zone)] = Field(
        default=DEFAULT_TIMEZONE, validate_default=True
    )
    log_format: Literal["text", "json"] = "text"
    metrics_listen: Annotated[ListenAddress | None, BeforeValidator(_parse_listen)] = None
    mail_rate_limit: tuple[Rate, ...] = ()  # written as "14/second" or a list of such
    # OAuth 2.0 (SASL XOAUTH2) instead of a password; see config/oauth.py for the grants.
    mail_oauth2_provider: str | None = None
    mail_oauth2_tenant: str | None = None
    mail_oauth2_token_url: str | None = None
    mail_oauth2_scope: str | None = None
    mail_oauth2_client_id: str | None = None
    mail_oauth2_client_secret: SecretStr | None = None
    mail_oauth2_refresh_token: SecretStr | None = None
    mail_oauth2_service_account: SecretStr | None = None  # the JSON key file's text

    _oauth2: OAuth2Settings | None = PrivateAttr(default=None)

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        # It goes into an HTTP header as is: a line break there would forge headers.
        if not text or not text.isascii() or not text.isprintable() or " " in text:
            raise ValueError("must be the API token on one line: printable ASCII, no spaces")
        return value

    @field_validator("instance_display_name")
    @classmethod
    def _display_name(cls, value: str) -> str:
        _header_safe(value)
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path | None) -> Path | None:
        # Relative to what? The daemon's working directory is not the operator's shell's;
        # the commands beside it would look elsewhere.
        if value is not None and not value.is_absolute():
            raise ValueError(f"{str(value)!r} is relative; write the absolute path")
        return value

    @field_validator("mail_from_address", "mail_reply_to_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("mail_helo_name")
    @classmethod
    def _helo(cls, value: str | None) -> str | None:
        if value is not None:
            _header_safe(value)
            if not value or any(c.isspace() for c in value):
                raise ValueError("must be a host name without spaces")
        return value

    @field_validator("mail_rate_limit", mode="before")
    @classmethod
    def _rate_limit(cls, value: object) -> tuple[Rate, ...]:
        if not isinstance(value, str | list):
            raise ValueError('must be a limit such as "14/second", or a list of them')
        return parse_rates(value)

    @field_validator("mail_language")
    @classmethod
    def _language(cls, value: str) -> str:
        """The tag's shape; whether a catalog serves it the renderer finds at start (this
        file is read by the probe too, which must not load Babel)."""
        value = value.strip()
        if not _LANGUAGE_TAG.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not a language tag such as de, pt-BR or zh-Hans")
        return value

    @field_validator("mail_catalog_dir")
    @classmethod
    def _catalog_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(
                f"{value} is not a directory; point it at a directory of "
                "<language>/LC_MESSAGES/messages.po, or remove the key"
            )
        return value

    @model_validator(mode="after")
    def _retry_order(self) -> MailSenderConfig:
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds must not be below retry_initial_seconds")
        return self

    @model_validator(mode="after")
    def _derived(self) -> MailSenderConfig:
        """Derive the OAuth grant once, where the values enter."""
        keys = {key: _plain(getattr(self, key)) for key in (*OAUTH2_KEYS, "mail_password")}
        keys["mail_username"] = self.mail_username
        self._oauth2 = oauth2_settings(keys)
        if self._oauth2 is not None and self.relay.url_username:
            raise ValueError(
                "mail_relay has user:password@ beside mail_oauth2_* keys; remove them from the URL"
            )
        return self

    def template_settings(self) -> dict[str, Any]:
        """What the renderer is built from: ``Renderer(**config.template_settings())``."""
        return {
            "instance_display_name": self.instance_display_name,
            "instance_url": self.instance_url,
            "template_dir": self.template_dir,
            "language": self.mail_language,
            "timezone": self.mail_timezone,
            "catalog_dir": self.mail_catalog_dir,
        }

    def oauth2(self) -> OAuth2Settings | None:
        """The OAuth 2.0 settings, when XOAUTH2 is configured."""
        return self._oauth2

    @property
    def relay(self) -> RelayEndpoint:
        """``mail_relay``, parsed when the file was read."""
        return self.mail_relay

    def credentials(self) -> tuple[str, str] | None:
        """SMTP AUTH credentials: the config keys when both are set, else the URL's, else None."""
        if self.mail_username and self.mail_password is not None:
            return self.mail_username, self.mail_password.get_secret_value()
        relay = self.relay
        if relay.url_username and relay.url_password is not None:
            return relay.url_username, relay.url_password
        return None

    def helo_name(self) -> str | None:
        """The EHLO name: ``mail_helo_name``, else the relay URL's path, else None (host name)."""
        return self.mail_helo_name or self.relay.helo_name


def _plain(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class ListenAddress(NamedTuple):
    """Where the metrics listener binds."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def refusal(self, exc: OSError) -> str:
        """What to tell the operator when this address cannot be bound."""
        return (
            f"metrics_listen {self}: cannot listen there ({exc.strerror or exc}); pick a free "
            "port and an address of this host, or remove the key"
        )


def split_listen(value: str) -> ListenAddress:
    """Split ``host:port`` (``[v6]:port`` allowed) or raise ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be host:port, for example 127.0.0.1:9464")
    return ListenAddress(host.strip("[]") or "127.0.0.1", int(port))


class ClientConfig(BaseModel):
    """The top-level keys of Kanidm's client config file; named instance tables are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    uri: str
    verify_ca: StrictBool = True
    verify_hostnames: StrictBool = True
    ca_path: Path | None = None
    connect_timeout: int | None = Field(default=None, ge=1)

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(
                "must be an absolute https URL of your Kanidm server, "
                "such as https://idm.example.com"
            )
        if parts.username is not None or parts.password is not None:
            # httpx would send them as Basic auth, and the URL is logged at start.
            raise ValueError(
                "must not contain user:password@; the mail sender authenticates with its "
                "API token only"
            )
        try:
            parts.port  # noqa: B018 - urlsplit checks the port range only when asked
        except ValueError:
            raise ValueError("has a port that is not a number between 1 and 65535") from None
        if parts.port == 0:
            raise ValueError("has a port that is not a number between 1 and 65535")
        return value

    @property
    def base_url(self) -> str:
        """Scheme and authority only: upstream drops any path in ``uri``."""
        parts = urlsplit(self.uri)
        return f"{parts.scheme}://{parts.netloc}"
