"""Operator retries: ``retry`` makes destinations due again.

The daemon stays the journal's one writer: the command leaves a request file in the state
directory and the daemon applies it before its next poll. With no daemon running, the
command applies it itself, under the same lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

from kanidm_mail_sender.core.planning import NO_DESTINATION
from kanidm_mail_sender.core.states import ACCEPTED, DEFERRED, EXPIRED, DestinationState
from kanidm_mail_sender.errors import RetryRefused, StateError
from kanidm_mail_sender.logs import get_logger
from kanidm_mail_sender.state.journal import Journal

__all__ = [
    "RetryRequest",
    "apply_retries",
    "apply_retry",
    "plan_retry",
    "prepare_requests",
    "submit_retry",
]

log = get_logger(__name__)

REQUESTS = "requests"
# The request directories already reported unreadable: one log line per incident.
_UNREADABLE: set[Path] = set()


@dataclass(frozen=True, slots=True)
class RetryRequest:
    """Retry ``destination`` of ``message_id`` (every destination not accepted when None)."""

    message_id: UUID
    destination: str | None = None
    resend: bool = False


def plan_retry(
    states: Mapping[str, DestinationState], destination: str | None, resend: bool
) -> list[str]:
    """The destinations to make due now; raises RetryRefused saying why not (pure)."""
    known = {name: state for name, state in states.items() if name != NO_DESTINATION}
    if not known:
        raise RetryRefused(
            "the journal has no destination of this message: it was never tried, or it is "
            "older than the journal keeps (8 days)"
        )
    if destination is not None:
        match = [name for name in known if name.casefold() == destination.casefold()]
        if not match:
            raise RetryRefused(
                f"{destination} is not a destination of this message; it has: "
                + ", ".join(sorted(known))
            )
        chosen = match
    else:
        chosen = sorted(known)
    due = []
    for name in chosen:
        state = known[name]
        if state.state == EXPIRED:
            raise RetryRefused(
                f"{name}: the reset link expired before it was mailed; a retry would send a "
                "dead link: have Kanidm send a new reset"
            )
        if state.state == ACCEPTED and not resend:
            if destination is not None:
                raise RetryRefused(
                    f"{name}: the relay accepted it ({state.reply or 'no reply kept'}); give "
                    "--resend to mail it again"
                )
            continue
        due.append(name)
    if not due:
        raise RetryRefused("every destination was accepted by the relay; --resend mails again")
    return due


async def apply_retry(journal: Journal, request: RetryRequest, now: float) -> list[str]:
    """Make the request's destinations due at ``now``; returns them."""
    states = journal.states(request.message_id)
    due = plan_retry(states, request.destination, request.resend)
    for name in due:
        state = states[name]
        await journal.record(
            request.message_id,
            name,
            DEFERRED,
            now=now,
            attempts=state.attempts,
            next_attempt=now,
            reply=state.reply,
        )
    return due


def prepare_requests(state_dir: Path) -> None:
    """Create ``requests/`` at the daemon's start, so that it is the daemon's own (an
    operator's ``sudo ... retry`` would otherwise create it as root, unreadable to it)."""
    try:
        (state_dir / REQUESTS).mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StateError(f"{state_dir}: cannot create {REQUESTS}/ ({exc.strerror})") from None


def submit_retry(state_dir: Path, request: RetryRequest) -> Path:
    """Leave ``request`` for the running daemon, readable by it: as root (``sudo``), the
    file (and a ``requests/`` made here) is given to the state directory's owner."""
    directory = state_dir / REQUESTS
    body = {
        "message_id": str(request.message_id),
        "destination": request.destination,
        "resend": request.resend,
    }
    target = directory / f"retry-{time.time_ns()}-{uuid4().hex[:8]}.json"
    temporary = target.with_suffix(".tmp")
    try:
        owner = state_dir.stat()
        directory.mkdir(mode=0o700, exist_ok=True)
        give = os.geteuid() == 0 and owner.st_uid != 0
        if give and directory.stat().st_uid != owner.st_uid:
            os.chown(directory, owner.st_uid, owner.st_gid)  # made by an earlier sudo
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if give:
                os.fchown(out.fileno(), owner.st_uid, owner.st_gid)
            out.write(json.dumps(body))
        os.replace(temporary, target)
    except OSError as exc:
        raise StateError(
            f"{directory}: cannot leave the request for the daemon ({exc.strerror}); run "
            "retry as the daemon's user (sudo -u <user>), or as root"
        ) from None
    return target


def _read(path: Path) -> RetryRequest:
    data = json.loads(path.read_text(encoding="utf-8"))
    destination = data.get("destination")
    return RetryRequest(
        UUID(data["message_id"]),
        destination if isinstance(destination, str) else None,
        data.get("resend") is True,
    )


async def apply_retries(journal: Journal) -> None:
    """Apply the requests left in the state directory, oldest first, and remove them."""
    directory = journal.state_dir / REQUESTS
    if not directory.is_dir():
        return
    if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
        # glob() would list nothing and say nothing: the requests would wait for ever.
        if directory not in _UNREADABLE:
            _UNREADABLE.add(directory)
            log.error(
                "operator.requests_unreadable",
                directory=str(directory),
                owner=directory.stat().st_uid,
                note=f"retry requests cannot be read by uid {os.geteuid()}; chown -R it to "
                "this user (a retry run as another user made it)",
            )
        return
    _UNREADABLE.discard(directory)
    for path in sorted(directory.glob("retry-*.json")):
        try:
            request = _read(path)
            due = await apply_retry(journal, request, time.time())
        except RetryRefused as exc:
            log.warning("operator.retry_refused", request=path.name, reason=str(exc))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("operator.retry_unreadable", request=path.name, error=repr(exc))
        else:
            log.info(
                "operator.retry",
                message_id=str(request.message_id),
                destinations=due,
                resend=request.resend,
            )
        with contextlib.suppress(OSError):
            path.unlink()
