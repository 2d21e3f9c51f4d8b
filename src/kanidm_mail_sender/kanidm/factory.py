"""The Kanidm client, built from both config files."""

from __future__ import annotations

from kanidm_mail_sender.config.loading import Configs
from kanidm_mail_sender.kanidm.client import KanidmClient, ListLimits, build_http_client
from kanidm_mail_sender.kanidm.pipeline import build_mark_pipeline, proxied
from kanidm_mail_sender.logs import get_logger

__all__ = ["make_kanidm"]

log = get_logger(__name__)


def make_kanidm(configs: Configs) -> KanidmClient:
    """The Kanidm client: httpx for listing, the pipeline for marks unless turned off."""
    mail, token = configs.mail, configs.mail.token.get_secret_value()
    http = build_http_client(
        configs.client,
        token,
        timeout=mail.http_timeout_seconds,
        max_connections=max(8, mail.mail_max_connections * 2),
    )
    limits = ListLimits(
        timeout=mail.http_list_timeout_seconds, max_bytes=mail.http_list_max_mib << 20
    )
    if not mail.http_pipelining:
        return KanidmClient(http, limits=limits)
    if proxied(configs.client.base_url):
        log.info(
            "kanidm.pipelining_off",
            reason="an HTTPS proxy is set in the environment; "
            "marks go through it one request at a time",
        )
        return KanidmClient(http, limits=limits)
    return KanidmClient(
        http,
        build_mark_pipeline(configs.client, token, timeout=mail.http_timeout_seconds),
        limits=limits,
    )
