"""The delivery engine: poll, send and mark stages, what each outcome means, the relay's
health and the metrics. It sees Kanidm and the relay only through protocols."""

from kanidm_mail_sender.engine.engine import (
    CANCEL_DEADLINE,
    CutOff,
    Engine,
    EngineSettings,
    HealthView,
    MailTransport,
    MessageQueue,
)
from kanidm_mail_sender.engine.metrics import Metrics

__all__ = [
    "CANCEL_DEADLINE",
    "CutOff",
    "Engine",
    "EngineSettings",
    "HealthView",
    "MailTransport",
    "MessageQueue",
    "Metrics",
]
