"""Our exception hierarchy; only :mod:`kanidm_mail_sender.cli` turns these into exit codes.

MailSenderError
├── ConfigError(ValueError)            a config file is missing, unreadable or invalid
│   ├── TemplateError                  a template is missing, broken, or fails on sample data
│   └── ScheduleError                  the cron expression is invalid or has no future fire time
├── RenderError                        one mail's template failed on that message's data
├── PreflightError                     refusing to start (running as root)
├── PlatformUnsupported                this Python cannot run the daemon correctly
├── RetryRefused                       an operator's retry does not apply (accepted, expired)
├── StateError                         the state directory or its journal cannot be used
│   ├── AlreadyRunning                 another instance holds the state directory lock
│   └── JournalFailed                  a write to the journal failed while running: fatal
├── KanidmError                        talking to Kanidm failed
│   ├── KanidmUnavailable(ConnectionError)   network problem or timeout: retry later
│   ├── KanidmAuthError                      401/403: the token cannot do this; fatal
│   ├── KanidmNotFound                       404: the message is gone (purged or deleted)
│   └── KanidmResponseError                  any other status, or an undecodable body
└── RelayError                         talking to the SMTP relay failed
    ├── DeliveryDeferred               transient for this destination (4xx, timeout, lost link)
    ├── DeliveryRejected               permanent for this destination (RCPT 5xx, DATA 5xx)
    ├── LinkExpired                    the reset link expired before DATA: never mailed
    ├── RelayThrottled                 the relay asks us to slow down (rate limits): all sends
    └── RelayUnavailable               relay-wide: refused, 421, MAIL FROM refused, our sender
        │                              or quota refused after DATA; pause all
        └── RelayMisconfigured         relay-wide and the operator must act: AUTH, TLS, STARTTLS
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kanidm_mail_sender.core.replies import Refusal

__all__ = [
    "AlreadyRunning",
    "ConfigError",
    "DeliveryDeferred",
    "DeliveryRejected",
    "JournalFailed",
    "KanidmAuthError",
    "KanidmError",
    "KanidmNotFound",
    "KanidmResponseError",
    "KanidmUnavailable",
    "LinkExpired",
    "MailSenderError",
    "PlatformUnsupported",
    "PreflightError",
    "RelayError",
    "RelayMisconfigured",
    "RelayThrottled",
    "RelayUnavailable",
    "RenderError",
    "RetryRefused",
    "ScheduleError",
    "StateError",
    "TemplateError",
]


class MailSenderError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(MailSenderError, ValueError):
    """A configuration file is missing, unreadable or invalid."""


class TemplateError(ConfigError):
    """A message template is missing, broken, or fails to render with sample data: found at
    start, and the operator's to fix."""


class RenderError(MailSenderError):
    """One mail's template failed to render with that message's data (a template that works
    on the samples but not on, say, an odd display name): that mail fails, the rest go on."""


class ScheduleError(ConfigError):
    """The cron expression is invalid, or it has no fire time in the future."""


class PreflightError(MailSenderError):
    """A start-up safety check refused to let the daemon run."""


class PlatformUnsupported(MailSenderError):
    """This Python (or a library under it) misbehaves in a way the daemon cannot work around."""


class RetryRefused(MailSenderError):
    """An operator's ``retry`` cannot be applied as asked; the message says why."""


class StateError(MailSenderError):
    """The state directory or the delivery journal cannot be used."""


class AlreadyRunning(StateError):
    """Another instance already holds the lock on the state directory."""


class JournalFailed(StateError):
    """Writing the journal failed while the daemon ran: a fatal run-time error (exit 1, as
    when the stop after it overruns), not a state directory unusable at start (exit 6)."""


class KanidmError(MailSenderError):
    """A call to Kanidm's REST API failed."""


class KanidmUnavailable(KanidmError, ConnectionError):
    """Kanidm could not be reached, or did not answer in time."""


class KanidmResponseError(KanidmError):
    """Kanidm answered with an unexpected status or an undecodable body."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KanidmAuthError(KanidmResponseError):
    """Kanidm refused the token (401) or its rights (403)."""


class KanidmNotFound(KanidmResponseError):
    """Kanidm does not know the message (404): purged, deleted, or not visible to us."""


class RelayError(MailSenderError):
    """Relaying a mail through the SMTP server failed.

    ``code`` is the SMTP reply code, if any; ``transport`` is true when the connection was
    lost or timed out rather than answered; ``disconnected_at`` names the SMTP step during
    which the relay closed the connection, if it did; ``refusal`` is the relay's refusing
    reply as read where it arrived, if there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        transport: bool = False,
        disconnected_at: str | None = None,
        refusal: Refusal | None = None,
    ) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.code = code
        self.transport = transport
        self.disconnected_at = disconnected_at


class DeliveryDeferred(RelayError):
    """A transient failure for one destination: try again later."""


class DeliveryRejected(RelayError):
    """A permanent refusal for one destination: never retried automatically."""


class LinkExpired(RelayError):
    """The credential-reset link expired before its DATA went out; it is never mailed."""


class RelayThrottled(RelayError):
    """The relay refuses for rate reasons (its words say so, outside RCPT): slow all sending."""


class RelayUnavailable(RelayError):
    """A relay-wide condition (refused connection, 421, our sender or quota refused): pause
    all sending."""


class RelayMisconfigured(RelayUnavailable):
    """A relay-wide problem the operator must fix (credentials, certificate, STARTTLS)."""
