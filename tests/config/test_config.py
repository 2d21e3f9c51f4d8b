"""Both config files: defaults, every kind of bad value, secrets from files and credentials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from kanidm_mail_sender.config.loading import load_client_config, load_mail_config
from kanidm_mail_sender.config.relays import parse_relay_url
from kanidm_mail_sender.config.statedir import resolve_state_dir
from kanidm_mail_sender.errors import ConfigError

GOOD: dict[str, Any] = {
    "token": "tok.en.value",
    "instance_display_name": "Kanidm",
    "instance_url": "https://idm.example.com",
    "mail_from_address": "idm@example.com",
    "mail_reply_to_address": "help@example.com",
    "mail_relay": "smtp://relay.example.com",
}


def write(tmp_path: Path, data: dict[str, Any], name: str = "mail-sender") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data))
    return path


def with_(**changes: Any) -> dict[str, Any]:
    data = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


def test_defaults_match_upstream(tmp_path: Path) -> None:
    loaded = load_mail_config(write(tmp_path, GOOD), environ={})
    config = loaded.config
    assert config.schedule.expression == "*/5 * * * * * *"
    assert config.mail_connect_timeout_seconds == 15
    assert config.mail_max_connections == 4
    assert config.shutdown_grace_seconds == 5
    assert config.http_pipelining is True
    assert config.credentials() is None
    assert loaded.warnings == []
    relay = config.relay
    assert (relay.host, relay.port, relay.implicit_tls) == ("relay.example.com", 587, False)


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"token": None}, "token", "missing"),
        ({"token": "abc\r\nX-Forged: 1"}, "token", "one line"),
        ({"instance_url": "idm.example.com"}, "instance_url", "absolute URL"),
        ({"mail_relay": "relay.example.com/x"}, "mail_relay", "smtps://"),
        ({"mail_relay": "bad host"}, "mail_relay", "Kanidm 1.10"),
        ({"mail_rate_limit": "5/week"}, "mail_rate_limit", "not a limit"),
        ({"mail_rate_limit": 5}, "mail_rate_limit", "such as"),
        ({"mail_relay": "http://relay.example.com"}, "mail_relay", "not http://"),
        ({"mail_relay": "smtp://"}, "mail_relay", "no host"),
        ({"mail_relay": "smtp://relay:99999"}, "mail_relay", "port"),
        ({"mail_from_address": "not-an-address"}, "mail_from_address", "local-part@domain"),
        ({"mail_reply_to_address": "a@-bad-.com"}, "mail_reply_to_address", "host name"),
        ({"instance_display_name": "Evil\r\nBcc: x@y.z"}, "instance_display_name", "U+000D"),
        ({"instance_display_name": "Evil\u2028Bcc"}, "instance_display_name", "LINE SEPARATOR"),
        ({"instance_display_name": "Evil\x85Bcc"}, "instance_display_name", "U+0085"),
        ({"instance_display_name": "Evil\u2029"}, "instance_display_name", "PARAGRAPH"),
        ({"instance_display_name": "Evil\x1b[2J"}, "instance_display_name", "U+001B"),
        ({"mail_helo_name": "mx\x00"}, "mail_helo_name", "U+0000"),
        ({"instance_url": "https://idm.example.com:99999/"}, "instance_url", "1-65535"),
        ({"instance_url": "https://idm.example.com:0/"}, "instance_url", "1-65535"),
        ({"state_dir": "state"}, "state_dir", "absolute path"),
        ({"schedule": "* * * * *"}, "schedule", "5 fields"),
        ({"schedule": "0 0 0 * * 0"}, "schedule", "outside day of week"),
        ({"mail_connect_timeout_seconds": 0}, "mail_connect_timeout_seconds", "greater"),
        ({"mail_max_connections": 0}, "mail_max_connections", "greater"),
        ({"log_format": "xml"}, "log_format", "'text' or 'json'"),
        ({"http_pipelining": "no"}, "http_pipelining", "valid boolean"),
        ({"metrics_listen": "localhost"}, "metrics_listen", "host:port"),
        ({"retry_initial_seconds": 100, "retry_max_seconds": 10}, "(file)", "retry_max_seconds"),
        ({"mail_language": "de_DE; DROP"}, "mail_language", "not a language tag"),
        ({"mail_timezone": "Europe/Nowhere"}, "mail_timezone", "not an IANA time zone"),
        ({"mail_timezone": "../../etc/passwd"}, "mail_timezone", "Europe/Berlin"),
        ({"mail_catalog_dir": "/no/such/dir"}, "mail_catalog_dir", "not a directory"),
    ],
)
def test_invalid_values_name_file_key_and_problem(
    tmp_path: Path, changes: dict[str, Any], key: str, fragment: str
) -> None:
    path = write(tmp_path, with_(**changes))
    with pytest.raises(ConfigError) as caught:
        load_mail_config(path, environ={})
    message = str(caught.value)
    assert str(path) in message
    assert f"key '{key}'" in message
    assert fragment in message


@pytest.mark.parametrize(
    "pasted",
    [
        "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWlsIn0.c2lnbmF0dXJl",  # a token
        "3f8a9c2b7d1e4f6a8b0c2d4e6f8a0b1c",  # hex
        "AKIAIOSFODNN7EXAMPLEwJalrXUtnFEMI/K7MDENG",  # a cloud key pair pasted together
    ],
)
@pytest.mark.parametrize("key", ["mail_from_address", "mail_reply_to_address", "instance_url"])
def test_a_secret_pasted_into_the_wrong_key_is_not_quoted(
    tmp_path: Path, pasted: str, key: str
) -> None:
    path = write(tmp_path, with_(**{key: pasted}))
    with pytest.raises(ConfigError) as caught:
        load_mail_config(path, environ={})
    message = str(caught.value)
    assert f"key '{key}'" in message
    assert pasted not in message
    assert pasted[:12] not in message


def test_a_long_refused_value_is_quoted_short(tmp_path: Path) -> None:
    value = "not an address " * 20
    with pytest.raises(ConfigError) as caught:
        load_mail_config(write(tmp_path, with_(mail_from_address=value)), environ={})
    assert value not in str(caught.value)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize(
    ("missing", "written"),
    [("mail_relay", "mail_relay_url"), ("token", "tokn"), ("mail_from_address", "mail_from")],
)
def test_a_misspelt_required_key_is_named_as_the_likely_typo(
    tmp_path: Path, missing: str, written: str
) -> None:
    data = with_()
    data[written] = data.pop(missing)
    with pytest.raises(ConfigError) as caught:
        load_mail_config(write(tmp_path, data), environ={})
    message = str(caught.value)
    assert f"{tmp_path / 'mail-sender'}: key '{missing}': is missing" in message
    assert f"the file has '{written}'" in message


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mail-sender"
    path.write_text('token = "unterminated\n')
    with pytest.raises(ConfigError, match=f"{path}: is not valid TOML"):
        load_mail_config(path, environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_mail_config(tmp_path / "nope", environ={})


def test_unknown_keys_and_half_credentials_warn(tmp_path: Path) -> None:
    loaded = load_mail_config(write(tmp_path, with_(shedule="x", mail_username="u")), environ={})
    assert any("unknown key 'shedule'" in w for w in loaded.warnings)
    assert any("without 'mail_password'" in w for w in loaded.warnings)
    assert loaded.config.credentials() is None


@pytest.mark.parametrize(
    ("delay", "warned"), [(0, False), (300, False), (3599, False), (3600, True)]
)
def test_a_standby_delay_as_long_as_a_reset_link_warns(
    tmp_path: Path, delay: int, warned: bool
) -> None:
    loaded = load_mail_config(write(tmp_path, with_(standby_delay_seconds=delay)), environ={})
    assert loaded.config.standby_delay_seconds == delay
    assert any("'standby_delay_seconds'" in w for w in loaded.warnings) is warned


def test_secrets_never_appear_in_repr_or_errors(tmp_path: Path) -> None:
    data = with_(mail_username="u", mail_password="hunter2-secret", token="tok-secret-1")
    config = load_mail_config(write(tmp_path, data), environ={}).config
    assert "hunter2-secret" not in repr(config)
    assert "tok-secret-1" not in repr(config)
    bad = write(tmp_path, {**data, "mail_relay": "ftp://x"}, "bad")
    with pytest.raises(ConfigError) as caught:
        load_mail_config(bad, environ={})
    assert "hunter2-secret" not in str(caught.value)
    assert "tok-secret-1" not in str(caught.value)


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, False), (0o600, False)])
def test_a_secret_file_every_user_can_read_warns(tmp_path: Path, mode: int, warned: bool) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file-token\n")
    secret.chmod(mode)
    loaded = load_mail_config(
        write(tmp_path, with_(token=None, token_file=str(secret))), environ={}
    )
    found = [w for w in loaded.warnings if "token_file" in w]
    assert bool(found) is warned
    if warned:
        assert f"{secret} holds a secret but is readable by all users; chmod o-rwx it" in found[0]
        assert "from-file-token" not in found[0]


def test_a_systemd_credential_is_not_warned_about(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "token").write_text("cred-token")
    (credentials / "token").chmod(0o644)
    loaded = load_mail_config(
        write(tmp_path, with_(token=None)), environ={"CREDENTIALS_DIRECTORY": str(credentials)}
    )
    assert loaded.config.token.get_secret_value() == "cred-token"
    assert not [w for w in loaded.warnings if "readable by all" in w]


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file-token\n")
    (tmp_path / "pw").write_text("from-file-password\n")
    data = with_(
        token=None,
        token_file=str(tmp_path / "token"),
        mail_username="u",
        mail_password_file=str(tmp_path / "pw"),
    )
    config = load_mail_config(write(tmp_path, data), environ={}).config
    assert config.token.get_secret_value() == "from-file-token"
    assert config.credentials() == ("u", "from-file-password")


def test_secrets_from_systemd_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "token").write_text("cred-token")
    (creds / "mail_password").write_text("cred-password")
    data = with_(token=None, mail_username="u")
    config = load_mail_config(
        write(tmp_path, data), environ={"CREDENTIALS_DIRECTORY": str(creds)}
    ).config
    assert config.token.get_secret_value() == "cred-token"
    assert config.credentials() == ("u", "cred-password")


def test_two_sources_for_one_secret_is_an_error(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "token").write_text("cred-token")
    with pytest.raises(ConfigError, match="keep exactly one"):
        load_mail_config(write(tmp_path, GOOD), environ={"CREDENTIALS_DIRECTORY": str(creds)})
    (tmp_path / "t").write_text("x")
    with pytest.raises(ConfigError, match="key 'token' and key 'token_file'"):
        load_mail_config(write(tmp_path, with_(token_file=str(tmp_path / "t"))), environ={})


def test_unreadable_secret_file(tmp_path: Path) -> None:
    data = with_(token=None, token_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"token_file.*missing: file not found"):
        load_mail_config(write(tmp_path, data), environ={})


@pytest.mark.parametrize(
    ("url", "host", "port", "implicit", "helo", "creds"),
    [
        ("smtp://example.com", "example.com", 587, False, None, None),
        ("smtp://example.com:12345", "example.com", 12345, False, None, None),
        ("smtps://example.com", "example.com", 465, True, None, None),
        ("smtps://example.com:12345", "example.com", 12345, True, None, None),
        ("smtp://examplehost", "examplehost", 587, False, None, None),
        ("smtp://relay/helo.example.org", "relay", 587, False, "helo.example.org", None),
        ("smtp://user%40x:p%2Fw@relay", "relay", 587, False, None, ("user@x", "p/w")),
        ("smtp://user@relay", "relay", 587, False, None, None),
        ("smtp://relay?tls=none", "relay", 587, False, None, None),
    ],
)
def test_relay_urls(
    url: str, host: str, port: int, implicit: bool, helo: str | None, creds: tuple[str, str] | None
) -> None:
    relay = parse_relay_url(url)
    assert (relay.host, relay.port, relay.implicit_tls, relay.helo_name) == (
        host,
        port,
        implicit,
        helo,
    )
    got = (relay.url_username, relay.url_password) if relay.url_username else None
    assert got == creds
    assert "p/w" not in relay.describe()


def test_client_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "uri": "https://idm.example.com/ignored/path",
            "verify_ca": False,
            "connect_timeout": 3,
            "staging": {"uri": "https://other"},
        },
        "config",
    )
    loaded = load_client_config(path)
    assert loaded.config.base_url == "https://idm.example.com"
    assert loaded.config.connect_timeout == 3
    assert any("NOT verified" in w for w in loaded.warnings)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "key 'uri': missing"),
        ({"uri": "idm.example.com"}, "absolute https URL"),
        ({"uri": "http://idm.example.com"}, "absolute https URL"),
        ({"uri": "https://idm", "verify_ca": "yes"}, "key 'verify_ca'"),
        ({"uri": "https://admin:hunter2@idm.example.com"}, "must not contain user:password"),
        ({"uri": "https://idm.example.com:99999"}, "port that is not a number"),
        ({"uri": "https://idm.example.com:0"}, "port that is not a number"),
        ({"uri": "https://idm.example.com:http"}, "port that is not a number"),
    ],
)
def test_bad_client_configs(tmp_path: Path, data: dict[str, Any], fragment: str) -> None:
    path = write(tmp_path, data, "config")
    with pytest.raises(ConfigError, match=fragment) as caught:
        load_client_config(path)
    assert str(path) in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("which", ["config", "secret"])
@pytest.mark.timeout(10)  # a FIFO opened for reading would block forever
def test_a_fifo_is_refused_at_once(tmp_path: Path, which: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    if which == "config":
        with pytest.raises(ConfigError, match="not a regular file"):
            load_mail_config(fifo, environ={})
    else:
        data = with_(token=None, token_file=str(fifo))
        with pytest.raises(ConfigError, match=r"token_file.*not a regular file"):
            load_mail_config(write(tmp_path, data), environ={})


def test_a_device_and_a_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_client_config(Path("/dev/zero"))
    with pytest.raises(ConfigError, match="not a regular file"):
        load_client_config(tmp_path)


def test_state_dir_resolution(tmp_path: Path) -> None:
    config = load_mail_config(write(tmp_path, GOOD), environ={}).config
    assert resolve_state_dir(config, {}) == Path("/var/lib/kanidm-mail-sender")
    assert resolve_state_dir(config, {"STATE_DIRECTORY": "/run/a:/run/b"}) == Path("/run/a")
    own = load_mail_config(write(tmp_path, with_(state_dir="/srv/x")), environ={}).config
    assert resolve_state_dir(own, {"STATE_DIRECTORY": "/run/a"}) == Path("/srv/x")
