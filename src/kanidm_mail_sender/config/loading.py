"""Loading the two config files: Kanidm's client config (``-c``) and ours (``-m``).

Loading is pure apart from reading the files: problems that should not stop the daemon are
returned as warnings for the caller to log; invalid values raise ConfigError naming the file,
the key, what is wrong and what to do."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import (
    ValidationError,
)

from kanidm_mail_sender.config.files import read_toml, resolve_secrets
from kanidm_mail_sender.config.preflight import Identity, check_config_file
from kanidm_mail_sender.config.settings import ClientConfig, MailSenderConfig
from kanidm_mail_sender.errors import ConfigError, MailSenderError

__all__ = [
    "Configs",
    "Loaded",
    "load_client_config",
    "load_configs",
    "load_mail_config",
    "located",
]


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


# A run that could be a pasted token or key: long base64, base64url or hex.
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9+/_.=-]{24,}")


def _explain(
    path: Path, error: ValidationError, given: Iterable[str] = (), known: Iterable[str] = ()
) -> ConfigError:
    """One line per problem, naming file and key; a missing key that an unknown key of the
    file resembles names it as the likely typo (``mail_relay_url`` for ``mail_relay``)."""
    unknown = sorted(set(given) - set(known))
    lines = []
    for item in error.errors(include_url=False):
        key = ".".join(str(p) for p in item["loc"]) or "(file)"
        message = "is missing" if item["type"] == "missing" else item["msg"]
        message = _unquoted(message.removeprefix("Value error, "), item.get("input"))
        hint = _HINTS.get(item["type"], "fix the value and start again")
        typo = difflib.get_close_matches(key, unknown, n=1, cutoff=0.6)
        if item["type"] == "missing" and typo:
            hint = f"the file has '{typo[0]}', which this version does not know: a typo?"
        lines.append(located(path, key, f"{message}; {hint}"))
    return ConfigError("\n".join(lines))


def _unquoted(message: str, value: object) -> str:
    """``message`` without the refused value where it could be a secret pasted into the wrong
    key (a token in ``mail_from_address``): the error goes to the console and the logs. Any
    other value is quoted at most 40 characters long."""
    if not isinstance(value, str) or not value:
        return message
    shown = [repr(value), value]
    if _TOKEN_LIKE.search(value):
        replacement = "the value (not shown: it looks like a token or key)"
    elif len(value) > 40:
        replacement = repr(value[:40] + "…")
    else:
        return message
    for form in shown:
        message = message.replace(form, replacement)
    return message


_RESET_LINK_LIFE = 3600.0  # Kanidm's default credential-reset link lifetime


def load_mail_config(
    path: Path, *, environ: Mapping[str, str] | None = None
) -> Loaded[MailSenderConfig]:
    """Read and validate the mail-sender config file at ``path``."""
    env = os.environ if environ is None else environ
    exposed: list[str] = []
    data = resolve_secrets(path, read_toml(path), env, exposed)
    try:
        config = MailSenderConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(path, exc, data, MailSenderConfig.model_fields) from None
    warnings = exposed + [
        f"{path}: unknown key '{key}' is ignored; check its spelling"
        for key in (config.model_extra or {})
    ]
    relay = config.relay
    if relay.legacy:
        warnings.append(
            located(
                path,
                "mail_relay",
                f"{data.get('mail_relay')!r} is the Kanidm 1.10 form, read as implicit TLS to "
                f'port {relay.port}; write mail_relay = "{relay.describe()}" (Kanidm 1.11 '
                "refuses the bare form)",
            )
        )
    if config.mail_username and config.mail_password is None and config.oauth2() is None:
        warnings.append(
            f"{path}: 'mail_username' is set without 'mail_password'; "
            "no SMTP authentication will be attempted"
        )
    if config.standby_delay_seconds >= _RESET_LINK_LIFE:
        warnings.append(
            located(
                path,
                "standby_delay_seconds",
                f"{config.standby_delay_seconds:g} s is as long as a reset link lives by default "
                "(1 hour): while the primary is down, this standby would send such links dead "
                "or not at all; use a few minutes (300 to 600)",
            )
        )
    if config.mail_password is not None and not config.mail_username:
        warnings.append(
            f"{path}: 'mail_password' is set without 'mail_username'; "
            "no SMTP authentication will be attempted"
        )
    return Loaded(config, warnings)


def load_client_config(path: Path) -> Loaded[ClientConfig]:
    """Read and validate Kanidm's client config file at ``path`` (top-level keys only)."""
    data = read_toml(path)
    known = set(ClientConfig.model_fields)
    warnings = [
        f"{path}: unknown key '{key}' is ignored"
        for key, value in data.items()
        if key not in known and not isinstance(value, dict)
    ]
    if "uri" not in data:
        raise ConfigError(
            located(
                path,
                "uri",
                'missing; add the URL of your Kanidm server, for example uri = "https://idm.example.com"',
            )
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


@dataclass(frozen=True)
class Configs:
    """Both validated config files, and where they were read from."""

    mail: MailSenderConfig
    client: ClientConfig
    mail_path: Path | None = None
    client_path: Path | None = None

    def where(self, key: str) -> Path | None:
        """The file that holds ``key``."""
        return self.client_path if key in ClientConfig.model_fields else self.mail_path

    @contextmanager
    def blame(
        self,
        *keys: str,
        errors: tuple[type[MailSenderError], ...] = (ConfigError,),
        but: tuple[type[MailSenderError], ...] = (),
    ) -> Iterator[None]:
        """Errors raised inside about a value, found after loading (a directory, a CA file,
        a port), are reworded to name the file and the key, as loading's are: the key the
        message begins with, else the first of ``keys``. Errors of a kind in ``but`` are
        not about the value and pass unchanged."""
        try:
            yield
        except errors as exc:
            if not isinstance(exc, but):
                text = str(exc)
                key = next((k for k in keys if text.startswith(f"{k} ")), keys[0])
                exc.args = (located(self.where(key), key, text),)
            raise


def located(path: Path | None, key: str, problem: str) -> str:
    """One refusal's words: the file, the key, and the problem with what to do (a problem
    that begins with the key's name has it once)."""
    problem = problem.removeprefix(f"{key} ")
    return f"{path}: key '{key}': {problem}" if path is not None else f"key '{key}': {problem}"


def load_configs(
    client_path: Path, mail_path: Path, *, environ: Mapping[str, str], ids: Identity
) -> tuple[Configs, list[str]]:
    """Check and load both files; returns the configs and every warning found."""
    warnings = check_config_file(client_path, ids, holds_secrets=False)
    warnings += check_config_file(mail_path, ids, holds_secrets=True)
    client: Loaded[ClientConfig] = load_client_config(client_path)
    mail: Loaded[MailSenderConfig] = load_mail_config(mail_path, environ=environ)
    configs = Configs(mail.config, client.config, mail_path=mail_path, client_path=client_path)
    return configs, warnings + client.warnings + mail.warnings
