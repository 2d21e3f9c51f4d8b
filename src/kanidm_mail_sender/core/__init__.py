"""Pure decisions and values, no I/O: queued messages and the journal's state words,
planning, addresses, schedules, links, sending-rate windows, and what relay replies mean.

Rendering (``core.render``, Jinja2) and mail building (``core.mail``) are imported by their
module path, so that the operator commands and the probe never load a template engine.
"""

from kanidm_mail_sender.core.addresses import check_address, domain_of
from kanidm_mail_sender.core.links import InstanceUrl, action_url
from kanidm_mail_sender.core.messages import (
    CredentialResetV1,
    MalformedMessage,
    QueuedMessage,
    Template,
    TestMessageV1,
    UnknownTemplate,
    parse_resource,
)
from kanidm_mail_sender.core.planning import (
    NO_DESTINATION,
    Action,
    Plan,
    backoff_delay,
    plan_message,
)
from kanidm_mail_sender.core.queueid import relay_queue_id
from kanidm_mail_sender.core.ratelimit import Rate, SendLimiter, parse_rates
from kanidm_mail_sender.core.replies import (
    Cause,
    Receipt,
    Refusal,
    Stage,
    Verdict,
    read_reply,
    redact_reply,
)
from kanidm_mail_sender.core.schedule import DEFAULT_SCHEDULE, Schedule, parse_schedule
from kanidm_mail_sender.core.states import (
    ACCEPTED,
    DEFERRED,
    EXPIRED,
    REJECTED,
    DestinationState,
    storable,
)

__all__ = [
    "ACCEPTED",
    "DEFAULT_SCHEDULE",
    "DEFERRED",
    "EXPIRED",
    "NO_DESTINATION",
    "REJECTED",
    "Action",
    "Cause",
    "CredentialResetV1",
    "DestinationState",
    "InstanceUrl",
    "MalformedMessage",
    "Plan",
    "QueuedMessage",
    "Rate",
    "Receipt",
    "Refusal",
    "Schedule",
    "SendLimiter",
    "Stage",
    "Template",
    "TestMessageV1",
    "UnknownTemplate",
    "Verdict",
    "action_url",
    "backoff_delay",
    "check_address",
    "domain_of",
    "parse_rates",
    "parse_resource",
    "parse_schedule",
    "plan_message",
    "read_reply",
    "redact_reply",
    "relay_queue_id",
    "storable",
]
