"""Where the state directory is: named, the default, or the private fallback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kanidm_mail_sender.errors import StateError
from kanidm_mail_sender.state.place import (
    ephemeral_dir,
    find_state_dir,
    settle_state_dir,
    writable,
)


def _unwritable(tmp_path: Path) -> Path:
    """A default nobody can create (under a regular file), whoever runs the test, root too."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    return blocker / "kanidm-mail-sender"


def test_a_writable_default_is_used_as_it_is(tmp_path: Path) -> None:
    place = settle_state_dir(tmp_path / "state", named=False, environ={}, temp_root=tmp_path)
    assert place == (tmp_path / "state", None)
    assert not (tmp_path / "state").exists()  # created by the journal, not here


def test_an_unwritable_default_falls_back_to_a_private_directory(tmp_path: Path) -> None:
    default = _unwritable(tmp_path)
    assert not writable(default)
    place = settle_state_dir(default, named=False, environ={}, temp_root=tmp_path)
    assert place.path == tmp_path / f"kanidm-mail-sender-{os.geteuid()}"
    assert place.path.stat().st_mode & 0o777 == 0o700
    assert place.warning is not None
    assert f"{default} is not writable by uid {os.geteuid()}" in place.warning
    assert "lasts only as long as this container" in place.warning
    assert find_state_dir(default, named=False, temp_root=tmp_path) == default  # no lock yet
    (place.path / "lock").write_text("1\n")
    assert find_state_dir(default, named=False, temp_root=tmp_path) == place.path


def test_a_named_directory_is_never_replaced(tmp_path: Path) -> None:
    named = _unwritable(tmp_path)
    assert settle_state_dir(named, named=True, environ={}, temp_root=tmp_path).path == named
    assert find_state_dir(named, named=True, temp_root=tmp_path) == named


def test_an_existing_fallback_of_ours_is_tightened(tmp_path: Path) -> None:
    fallback = ephemeral_dir(tmp_path)
    fallback.mkdir(mode=0o755)
    fallback.chmod(0o755)
    settle_state_dir(_unwritable(tmp_path), named=False, environ={}, temp_root=tmp_path)
    assert fallback.stat().st_mode & 0o777 == 0o700


def test_a_fallback_planted_by_someone_else_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir()
    ephemeral_dir(tmp_path).symlink_to(elsewhere)
    with pytest.raises(StateError, match="is not a directory of uid"):
        settle_state_dir(_unwritable(tmp_path), named=False, environ={}, temp_root=tmp_path)


def test_in_a_pod_a_state_directory_that_is_no_volume_is_warned_about(tmp_path: Path) -> None:
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    place = settle_state_dir(tmp_path / "state", named=True, environ=pod, temp_root=tmp_path)
    assert place.warning is not None
    assert "is not a volume" in place.warning
