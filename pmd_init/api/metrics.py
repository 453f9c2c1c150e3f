"""`GET /metrics`: pmd and its programs in Prometheus' text format, or in OpenMetrics when
the scraper's Accept asks for it.

prometheus_client is imported here on the first scrape and not before (prometheus.py):
a pmd that nobody scrapes never pays for it. The collector is built then, once, and kept
in the app's context; each scrape reads pmd's state afresh through it.
"""

from __future__ import annotations

from sanic import Request
from sanic.response import HTTPResponse, raw

from .context import JsonBlueprint, app_of
from .openapi import doc

bp = JsonBlueprint("metrics")


@bp.get("/metrics")
@doc("pmd and its programs as Prometheus metrics (docs/metrics.md)",
     response="the text exposition format 0.0.4, or OpenMetrics 1.0 when Accept asks "
              "for application/openmetrics-text", content_type="text/plain")
async def metrics(request: Request) -> HTTPResponse:
    from prometheus_client.exposition import choose_encoder

    from .prometheus import OPENMETRICS, TEXT, PmdCollector

    ctx = app_of(request).ctx
    if ctx.metrics_collector is None:
        ctx.metrics_collector = PmdCollector(ctx.init, ctx.access.failures)
    # prometheus_client's negotiation: OpenMetrics when Accept names it (Prometheus sends
    # it first by default), the 0.0.4 text format otherwise.
    _, chosen = choose_encoder(request.headers.get("accept", ""))
    openmetrics = chosen.startswith("application/openmetrics-text")
    return raw(ctx.metrics_collector.scrape(openmetrics),
               content_type=OPENMETRICS if openmetrics else TEXT)
