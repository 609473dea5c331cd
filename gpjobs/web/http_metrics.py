"""Counting HTTP requests for /metrics: by route (the URL pattern, not the URL: bounded labels), method and the
status actually sent, with a latency histogram. The outermost middleware, so errors rendered by the others
are counted with the status they went out with (Esri errors are HTTP 200 in the Esri spaces)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import Counter, Histogram

UNMATCHED = "unmatched"  # no route: 404s and probes, one label for all of them
METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"})  # any other: "other"


def route_of(request: web.Request) -> str:
    """The matched route's pattern (e.g. .../jobs/{job_id}), or UNMATCHED."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else UNMATCHED


def http_metrics_middleware(requests: Counter, latency: Histogram) -> Middleware:
    """The middleware that counts into `requests` (route, method, status) and `latency` (route, method)."""
    children: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # labels() costs a lock and a tuple per call

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
            key = (route_of(request), request.method if request.method in METHODS else "other", status)
            pair = children.get(key)
            if pair is None:
                pair = children[key] = (requests.labels(key[0], key[1], str(status)), latency.labels(key[0], key[1]))
            pair[0].inc()
            pair[1].observe(time.perf_counter() - started)

    return count
