"""The two configuration files: Kanidm's client config (``-c``) and ours (``-m``).

Loading is pure apart from reading the files: problems that should not stop the daemon are
returned as warnings for the caller to log; invalid values raise ConfigError naming the file,
the key, what is wrong and what to do.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from kanidm_mail_sender.config.oauth import KEYS as OAUTH2_KEYS
from kanidm_mail_sender.config.oauth import OAuth2Settings, oauth2_settings
from kanidm_mail_sender.core.addresses import check_address
from kanidm_mail_sender.core.links import InstanceUrl
from kanidm_mail_sender.core.ratelimit import Rate, parse_rates
from kanidm_mail_sender.core.schedule import DEFAULT_SCHEDULE, Schedule, parse_schedule
from kanidm_mail_sender.errors import ConfigError

__all__ = [
    "DEFAULT_CLIENT_CONFIG",
    "DEFAULT_MAIL_CONFIG",
    "DEFAULT_STATE_DIR",
    "ClientConfig",
    "ListenAddress",
    "Loaded",
    "MailSenderConfig",
    "RelayEndpoint",
    "load_client_config",
    "load_mail_config",
    "parse_relay_url",
    "resolve_state_dir",
    "split_listen",
    "state_dir_named",
    "systemd_state_dir",
]

DEFAULT_CLIENT_CONFIG = Path("/etc/kanidm/config")
DEFAULT_MAIL_CONFIG = Path("/etc/kanidm/mail-sender")
DEFAULT_STATE_DIR = Path("/var/lib/kanidm-mail-sender")


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


def _parse_schedule(value: object) -> object:
    return parse_schedule(value) if isinstance(value, str) else value


def _parse_instance_url(value: object) -> object:
    return InstanceUrl(value) if isinstance(value, str) else value


def _parse_relay(value: object) -> object:
    return parse_relay_url(value) if isinstance(value, str) else value


def _parse_listen(value: object) -> object:
    return split_listen(value) if isinstance(value, str) else value


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
    mail_max_connections: int = Field(default=4, ge=1, le=64)
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
    retry_initial_seconds: float = Field(default=30, gt=0, le=86400)
    retry_max_seconds: float = Field(default=3600, gt=0, le=7 * 86400)
    template_dir: Path | None = None
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
        if any(c in value for c in "\r\n\0"):
            raise ValueError("must not contain line breaks; it is used in mail headers")
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("mail_from_address", "mail_reply_to_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("mail_helo_name")
    @classmethod
    def _helo(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise ValueError("must be a host name without spaces")
        return value

    @field_validator("mail_rate_limit", mode="before")
    @classmethod
    def _rate_limit(cls, value: object) -> tuple[Rate, ...]:
        if not isinstance(value, str | list):
            raise ValueError('must be a limit such as "14/second", or a list of them')
        return parse_rates(value)

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


T = TypeVar("T")


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """A validated config and the warnings found while loading it."""

    config: T
    warnings: list[str]


_HINTS = {
    "missing": "add it to the file",
    "extra_forbidden": "remove it",
}


def _explain(path: Path, error: ValidationError) -> ConfigError:
    lines = []
    for item in error.errors(include_url=False):
        key = ".".join(str(p) for p in item["loc"]) or "(file)"
        message = "is missing" if item["type"] == "missing" else item["msg"]
        message = message.removeprefix("Value error, ")
        hint = _HINTS.get(item["type"], "fix the value and start again")
        lines.append(f"{path}: key '{key}': {message}; {hint}")
    return ConfigError("\n".join(lines))


_MAX_FILE = 1 << 20  # a config or secret file is a few hundred bytes


def read_regular_file(path: Path, what: str = "") -> bytes:
    """The bytes of ``path``, refusing anything but a regular file of at most 1 MiB.

    A FIFO or a device given by mistake would otherwise block the start forever (or feed
    it without end); it is opened without blocking and refused after one ``fstat``.
    """
    prefix = f"{what}: " if what else ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(f"{prefix}{path}: file not found; create it or pass its path") from None
    except PermissionError:
        uid = os.geteuid()
        raise ConfigError(
            f"{prefix}{path}: cannot be read by uid {uid} (permission denied); give it to that "
            f"user (chown {uid} and chmod 0400; in the image uid 10001), or in Kubernetes mount "
            "it from a Secret with fsGroup 10001 and defaultMode 0440"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{prefix}{path}: cannot be read ({exc.strerror}); check its permissions"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(
            f"{prefix}{path}: is not a regular file (a directory, FIFO or device?); "
            "give the path of the file itself"
        )
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(_MAX_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"{prefix}{path}: cannot be read ({exc.strerror})") from None
    if len(data) > _MAX_FILE:
        raise ConfigError(f"{prefix}{path}: is larger than 1 MiB; this is not a config file")
    return data


def _read_toml(path: Path) -> dict[str, Any]:
    raw = read_regular_file(path)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: is not valid TOML: {exc}") from None


_SECRETS = tuple(
    (key, f"{key}_file")
    for key in (
        "token",
        "mail_password",
        "mail_oauth2_client_secret",
        "mail_oauth2_refresh_token",
        "mail_oauth2_service_account",
    )
)


def _resolve_secrets(
    path: Path, data: dict[str, Any], environ: Mapping[str, str], exposed: list[str]
) -> dict[str, Any]:
    """Take each secret from exactly one of: the key, ``<key>_file``, or a systemd credential.
    A ``*_file`` that every user may read is named in ``exposed`` (systemd's credentials are
    private by construction)."""
    data = dict(data)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    for key, file_key in _SECRETS:
        sources: list[tuple[str, Path | None]] = []
        if key in data:
            sources.append((f"key '{key}'", None))
        if file_key in data:
            value = data.pop(file_key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}: key '{file_key}': must be the path of a file")
            sources.append((f"key '{file_key}'", Path(value)))
        if credentials and (Path(credentials) / key).is_file():
            sources.append((f"systemd credential '{key}'", Path(credentials) / key))
        if len(sources) > 1:
            names = " and ".join(name for name, _ in sources)
            raise ConfigError(f"{path}: '{key}' is given by {names}; keep exactly one of them")
        if sources and sources[0][1] is not None:
            secret_path = sources[0][1]
            raw = read_regular_file(secret_path, f"{path}: {sources[0][0]}")
            if sources[0][0].startswith("key ") and _readable_by_all(secret_path):
                exposed.append(
                    f"{path}: {sources[0][0]}: {secret_path} holds a secret but is readable by "
                    "all users; chmod o-rwx it"
                )
            try:
                data[key] = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ConfigError(
                    f"{path}: {sources[0][0]}: {secret_path} is not UTF-8 text"
                ) from None
    return data


def _readable_by_all(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False  # read just now; a race is not worth a warning


_RESET_LINK_LIFE = 3600.0  # Kanidm's default credential-reset link lifetime


def load_mail_config(
    path: Path, *, environ: Mapping[str, str] | None = None
) -> Loaded[MailSenderConfig]:
    """Read and validate the mail-sender config file at ``path``."""
    env = os.environ if environ is None else environ
    exposed: list[str] = []
    data = _resolve_secrets(path, _read_toml(path), env, exposed)
    try:
        config = MailSenderConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(path, exc) from None
    warnings = exposed + [
        f"{path}: unknown key '{key}' is ignored; check its spelling"
        for key in (config.model_extra or {})
    ]
    relay = config.relay
    if relay.legacy:
        warnings.append(
            f"{path}: key 'mail_relay': {data.get('mail_relay')!r} is the Kanidm 1.10 form, read "
            f'as implicit TLS to port {relay.port}; write mail_relay = "{relay.describe()}" '
            "(Kanidm 1.11 refuses the bare form)"
        )
    if config.mail_username and config.mail_password is None and config.oauth2() is None:
        warnings.append(
            f"{path}: 'mail_username' is set without 'mail_password'; "
            "no SMTP authentication will be attempted"
        )
    if config.standby_delay_seconds >= _RESET_LINK_LIFE:
        warnings.append(
            f"{path}: key 'standby_delay_seconds': {config.standby_delay_seconds:g} s is as long "
            "as a reset link lives by default (1 hour): while the primary is down, this standby "
            "would send such links dead or not at all; use a few minutes (300 to 600)"
        )
    if config.mail_password is not None and not config.mail_username:
        warnings.append(
            f"{path}: 'mail_password' is set without 'mail_username'; "
            "no SMTP authentication will be attempted"
        )
    return Loaded(config, warnings)


def load_client_config(path: Path) -> Loaded[ClientConfig]:
    """Read and validate Kanidm's client config file at ``path`` (top-level keys only)."""
    data = _read_toml(path)
    known = set(ClientConfig.model_fields)
    warnings = [
        f"{path}: unknown key '{key}' is ignored"
        for key, value in data.items()
        if key not in known and not isinstance(value, dict)
    ]
    if "uri" not in data:
        raise ConfigError(
            f"{path}: key 'uri': missing; add the URL of your Kanidm server, "
            'for example uri = "https://idm.example.com"'
        )
    try:
        config = ClientConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(path, exc) from None
    if not config.verify_ca:
        warnings.append(f"{path}: verify_ca = false: Kanidm's certificate is NOT verified")
    if not config.verify_hostnames:
        warnings.append(
            f"{path}: verify_hostnames = false: Kanidm's certificate may name another host"
        )
    return Loaded(config, warnings)


def resolve_state_dir(config: MailSenderConfig, environ: Mapping[str, str]) -> Path:
    """``state_dir``, else systemd's ``$STATE_DIRECTORY`` (first entry), else the default."""
    if config.state_dir is not None:
        return config.state_dir
    return systemd_state_dir(environ) or DEFAULT_STATE_DIR


def systemd_state_dir(environ: Mapping[str, str]) -> Path | None:
    """The first entry of systemd's ``$STATE_DIRECTORY``, if it is set."""
    first = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if first else None


def state_dir_named(config: MailSenderConfig, environ: Mapping[str, str]) -> bool:
    """Whether the operator named the state directory (``state_dir`` or systemd's
    ``$STATE_DIRECTORY``) rather than leaving it to the default."""
    return config.state_dir is not None or systemd_state_dir(environ) is not None
