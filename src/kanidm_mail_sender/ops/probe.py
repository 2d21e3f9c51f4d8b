"""``--probe``: a quiet health check for container engines (one line, no traceback).

With ``metrics_listen`` set it asks the running daemon's ``/readyz``; without, it checks that
a daemon holds the state directory's lock. The image runs it with no flags, so when its
config path holds no config (kaniop's command names ``/data/config/...``), it looks for the
daemon where a daemon without ``state_dir`` keeps its state: the default, or its fallback.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from pathlib import Path

from kanidm_mail_sender.config.loading import load_mail_config
from kanidm_mail_sender.config.settings import DEFAULT_STATE_DIR
from kanidm_mail_sender.config.statedir import resolve_state_dir, systemd_state_dir
from kanidm_mail_sender.errors import MailSenderError
from kanidm_mail_sender.state.lock import lock_holder
from kanidm_mail_sender.state.place import find_state_dir
from kanidm_mail_sender.state.status import read_status

__all__ = ["probe"]

_TIMEOUT = 3.0
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def probe(mail_config: Path, environ: Mapping[str, str]) -> tuple[bool, str]:
    """Whether the daemon is healthy, and why (one line)."""
    try:
        config = load_mail_config(mail_config, environ=environ).config
    except MailSenderError as exc:
        if mail_config.exists():
            return False, str(exc).splitlines()[0]
        return _find_daemon(environ, f"{mail_config} does not exist")
    listen = config.metrics_listen
    if listen is not None:
        return _ready(_ANY.get(listen.host, listen.host), listen.port)
    return _lock_held(resolve_state_dir(config, environ))


def _ready(host: str, port: int) -> tuple[bool, str]:
    connection = http.client.HTTPConnection(host, port, timeout=_TIMEOUT)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        body = response.read(200).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        return False, f"http://{host}:{port}/readyz: {exc}"
    finally:
        connection.close()
    return response.status == 200, f"/readyz answered {response.status} {body}"


def _lock_held(state_dir: Path) -> tuple[bool, str]:
    pid = lock_holder(state_dir)
    if pid is None:
        return False, f"no daemon holds {state_dir}"
    if (read_status(state_dir) or {}).get("running") is False:
        return False, f"the daemon (pid {pid}) holding {state_dir} is stopping"
    return True, f"the daemon (pid {pid}) holds {state_dir}"


def _find_daemon(environ: Mapping[str, str], why: str) -> tuple[bool, str]:
    from_systemd = systemd_state_dir(environ)
    place = find_state_dir(from_systemd or DEFAULT_STATE_DIR, named=from_systemd is not None)
    healthy, found = _lock_held(place)
    return healthy, found if healthy else f"{why}, and {found}"
