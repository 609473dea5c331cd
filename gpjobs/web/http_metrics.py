"""Counting HTTP requests for /metrics: by route (the URL pattern, not the URL: bounded labels), method and the
status actually sent, with a latency histogram. The outermost middleware, so errors rendered by the others
are counted with the status they went out with (Esri errors are HTTP 200 in the Esri spaces)."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import Counter, Histogram

UNMATCHED = "unmatched"  # no route: 404s and probes, one label for all of them


def route_of(request: web.Request) -> str:
    """The matched route's pattern (e.g. .../jobs/{job_id}), or UNMATCHED."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else UNMATCHED


def http_metrics_middleware(requests: Counter, latency: Histogram) -> Middleware:
    """The middleware that counts into `requests` (route, method, status) and `latency` (route, method)."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route, method = route_of(request), request.method
            requests.labels(route, method, str(status)).inc()
            latency.labels(route, method).observe(time.perf_counter() - started)

    return count
