"""Kanidm's REST API: the client (ready list and marks), the pipelined mark connection, the
streaming ready-list scanner and the body decoders."""

from kanidm_mail_sender.kanidm.client import KanidmClient, ListLimits, build_http_client
from kanidm_mail_sender.kanidm.factory import make_kanidm
from kanidm_mail_sender.kanidm.readylist import ReadyListParser, self_check

__all__ = [
    "KanidmClient",
    "ListLimits",
    "ReadyListParser",
    "build_http_client",
    "make_kanidm",
    "self_check",
]
