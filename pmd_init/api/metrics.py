"""`GET /metrics`: pmd and its programs in Prometheus' text format, or in OpenMetrics when
the scraper's Accept asks for it.

prometheus_client is imported here on the first scrape and not before (prometheus.py):
a pmd that nobody scrapes never pays for it. The registry is built then, once, and kept
in the app's context; each scrape reads pmd's state afresh through it.
"""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw

from .context import app_of
from .openapi import doc

bp = Blueprint("metrics")


@bp.get("/metrics")
@doc("pmd and its programs as Prometheus metrics (docs/metrics.md)",
     response="the text exposition format 0.0.4, or OpenMetrics 1.0 when Accept asks "
              "for application/openmetrics-text", content_type="text/plain")
async def metrics(request: Request) -> HTTPResponse:
    from prometheus_client.exposition import choose_encoder

    from .prometheus import registry_for

    ctx = app_of(request).ctx
    if ctx.metrics_registry is None:
        ctx.metrics_registry = registry_for(ctx.init, ctx.access.failures)
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return raw(encode(ctx.metrics_registry), content_type=content_type)
