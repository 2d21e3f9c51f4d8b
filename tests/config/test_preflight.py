"""Start-up checks: the root refusal, config file permissions, a missing config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kanidm_mail_sender.config.preflight import Identity, check_config_file, check_not_root
from kanidm_mail_sender.errors import ConfigError, PreflightError


@pytest.mark.parametrize(
    ("ids", "skip", "refused"),
    [
        (Identity(1000, 1000, 1000, 1000), False, False),
        (Identity(0, 0, 0, 0), False, True),
        (Identity(1000, 1000, 0, 1000), False, True),
        (Identity(1000, 0, 1000, 1000), True, False),
    ],
)
def test_root_refusal(ids: Identity, skip: bool, refused: bool) -> None:
    if refused:
        with pytest.raises(PreflightError, match="refusing to run as root"):
            check_not_root(ids, skip=skip)
    else:
        warnings = check_not_root(ids, skip=skip)
        assert bool(warnings) == skip


@pytest.mark.parametrize(
    ("mode", "owner", "fragment"),
    [
        (0o600, "self", "modify its own config"),
        (0o400, "self", None),
        (0o644, "other", "readable by all users"),
        (0o666, "other", "modify its own config"),
    ],
)
def test_config_permission_warnings(
    tmp_path: Path, mode: int, owner: str, fragment: str | None
) -> None:
    path = tmp_path / "mail-sender"
    path.write_text("")
    path.chmod(mode)
    uid = os.stat(path).st_uid
    ids = Identity(uid, uid if owner == "self" else uid + 1, 4242, 4242)
    warnings = check_config_file(path, ids, holds_secrets=True)
    if fragment is None:
        assert warnings == []
    else:
        assert any(fragment in w for w in warnings)


def test_missing_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file missing"):
        check_config_file(tmp_path / "nope", Identity(1, 1, 1, 1), holds_secrets=False)
