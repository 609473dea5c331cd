"""Who is calling: the token from `token`, `Authorization: Bearer` or `X-Esri-Authorization: Bearer`.

The middleware puts a `Principal` (or None: no token on a server with auth) on every request under
`PRINCIPAL_KEY` (the portal module reads the same key). A token that is present but unknown, expired or
revoked is answered with 498 at once; handlers that need a caller use `require_principal` (499).
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from gpjobs.appkeys import CONFIG_KEY, STORE_KEY
from gpjobs.domain import ANONYMOUS, Principal
from gpjobs.web.render import EsriError, forbidden, invalid_token, params, token_required

# Principal | None of the request (None: no token on a secured server). gpjobs.web.portal should import it.
PRINCIPAL_KEY = web.RequestKey[Principal | None]("gpjobs_principal")
TOKEN_HEADERS = ("X-Esri-Authorization", "Authorization")


def bearer(value: str) -> str | None:
    """The token of a `Bearer <token>` header value (scheme case-insensitive), else None."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def request_token(request: web.Request) -> str | None:
    """The token from the Esri header, the standard header, or the `token` query/form field (that order)."""
    for header in TOKEN_HEADERS:
        token = bearer(request.headers.get(header, ""))
        if token:
            return token
    token = params(request).get("token", "").strip()
    return token or None


async def identify(request: web.Request) -> Principal | None:
    """The caller of this request; raises 498 for a bad token. None = anonymous on a secured server."""
    token = request_token(request)
    if token:
        principal = await request.app[STORE_KEY].authenticate(token)
        if principal is None:
            raise invalid_token()
        return principal
    return ANONYMOUS if request.app[CONFIG_KEY].auth.anonymous else None


@web.middleware
async def auth_middleware(request: web.Request, handler):
    """Resolve the caller once per request (params must already be loaded by the error middleware)."""
    if PRINCIPAL_KEY not in request:
        request[PRINCIPAL_KEY] = await identify(request)
    return await handler(request)


def current_principal(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL_KEY)


def require_principal(request: web.Request) -> Principal:
    """The caller, or 499 Token Required."""
    principal = request.get(PRINCIPAL_KEY)
    if principal is None:
        raise token_required()
    return principal


def require_admin(request: web.Request) -> Principal:
    """An admin caller, or 499 (no token) / 403 (a user token)."""
    principal = require_principal(request)
    if not principal.is_admin:
        raise forbidden()
    return principal


def token_query(request: web.Request) -> str:
    """`token=...` to carry into html links when the caller passed the token in the URL or form."""
    token = params(request).get("token", "").strip()
    return urlencode({"token": token}) if token else ""


__all__ = [
    "PRINCIPAL_KEY",
    "EsriError",
    "auth_middleware",
    "identify",
    "request_token",
    "require_admin",
    "require_principal",
    "current_principal",
    "token_query",
]
