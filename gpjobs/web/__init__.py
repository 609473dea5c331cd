"""The HTTP face of gpjobs: Esri GP REST routes, admin routes, auth, and rendering.

`setup_web(app)` registers the middlewares (request id, errors, auth) and the routes; the portal
(`gpjobs.web.portal`) is set up separately by `gpjobs.app`.
"""

from __future__ import annotations

from aiohttp import web

from gpjobs.web.auth import auth_middleware
from gpjobs.web.middleware import error_middleware, request_id_middleware
from gpjobs.web.routes import add_routes


def setup_web(app: web.Application) -> None:
    """Middlewares (outermost first) and routes of the GP service, admin API and /health."""
    app.middlewares.extend([request_id_middleware, error_middleware, auth_middleware])
    add_routes(app)
