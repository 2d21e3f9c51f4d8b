"""The metrics listener: ``/metrics``, ``/healthz`` and ``/readyz`` on ``metrics_listen``."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kanidm_mail_sender.config.settings import ListenAddress
from kanidm_mail_sender.engine.engine import HealthView
from kanidm_mail_sender.engine.metrics import Metrics
from kanidm_mail_sender.errors import ConfigError
from kanidm_mail_sender.runtime.httpserver import HttpServer, Limits, Request, Response, serve

__all__ = ["METRICS_LIMITS", "start_metrics_server"]

# The listener's own budget: far below any file-descriptor limit, so scrapers (or anyone who
# can reach the port) can never take descriptors or much CPU from delivery.
METRICS_LIMITS = Limits(
    max_connections=32, header_timeout=5.0, idle_timeout=5.0, max_body=0, max_head=8192
)


async def start_metrics_server(
    metrics: Metrics, view: Callable[[], HealthView], listen: ListenAddress
) -> HttpServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` (from ``view``) on ``listen``."""
    host, port = listen

    async def handle(request: Request) -> Response:
        path = request.path.split("?", 1)[0]
        if request.method != "GET":
            return Response(405, b"GET only\n", "text/plain")
        if path == "/metrics":
            return Response(200, metrics.exposition(), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            if metrics.stopping:
                return Response(503, b"stopping\n", "text/plain")
            return Response(200, b"ok\n", "text/plain")
        if path == "/readyz":
            health = view()
            return Response(200 if health.ready else 503, f"{health.why}\n".encode(), "text/plain")
        return Response(404, b"not found\n", "text/plain")

    try:
        return await serve(handle, host, port, limits=METRICS_LIMITS)
    except OSError as exc:
        raise ConfigError(listen.refusal(exc)) from None
