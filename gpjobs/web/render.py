"""THE one place that turns handler results into HTTP responses: json | pjson | html, and Esri errors.

Under the Esri URL spaces (`/arcgis/...`, `/sharing/...`) errors are HTTP 200 with
`{"error": {"code", "message", "details"}}` because real clients read the body, not the status
(protocol.md §1). Elsewhere (health, metrics) real status codes are used. HTML pages (for people)
carry the real status code too: no program reads them.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from gpjobs.web.pages import render_page

JSON_CONTENT_TYPE = "application/json"
ESRI_SPACES = ("/arcgis/", "/sharing/", "/portal/")
FORMATS = ("json", "pjson", "html")

# The merged query + form parameters of a request (the portal module reads the same key).
PARAMS_KEY: web.RequestKey[Mapping[str, str]] = web.RequestKey("gpjobs_params", Mapping)


class EsriError(Exception):
    """An error a client caused; rendered as the Esri error body (or an HTML page)."""

    def __init__(self, code: int, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.details = [str(d) for d in (details or [])]

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    @property
    def http_status(self) -> int:
        """Real HTTP status for responses outside the Esri spaces (498/499 are not HTTP codes)."""
        if self.code in (498, 499):
            return 401
        return self.code if 400 <= self.code <= 599 else 400


def invalid_url() -> EsriError:
    """Unknown job / resource: the same answer whether it does not exist or belongs to someone else."""
    return EsriError(400, "Invalid URL", ["Invalid URL"])


def invalid_parameters(details: list[str]) -> EsriError:
    return EsriError(400, "Invalid or missing input parameters.", details)


def token_required() -> EsriError:
    return EsriError(499, "Token Required", [])


def invalid_token() -> EsriError:
    return EsriError(498, "Invalid token.", [])


def forbidden() -> EsriError:
    return EsriError(403, "You do not have permissions to access this resource or perform this operation.", [])


def dumps(data: Any, *, pretty: bool = False) -> bytes:
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if pretty else 0)
    return orjson.dumps(data, option=option, default=str)


def json_response(
    data: Any, *, pretty: bool = False, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON body with `application/json; charset=utf-8` (clients need `json` in the Content-Type)."""
    return web.Response(
        body=dumps(data, pretty=pretty), status=status, content_type=JSON_CONTENT_TYPE, charset="utf-8", headers=headers
    )


def in_esri_space(path: str) -> bool:
    return path.startswith(ESRI_SPACES)


def params(request: web.Request) -> Mapping[str, str]:
    """The merged query + form parameters (form wins); filled by the middleware, query-only otherwise."""
    merged = request.get(PARAMS_KEY)
    return merged if merged is not None else request.query


async def load_params(request: web.Request) -> Mapping[str, str]:
    """Read query + urlencoded/multipart form once and keep the merged mapping on the request.

    A body that cannot be read (bad charset, invalid UTF-8, malformed multipart, an undecodable
    Content-Encoding) is the client's error: EsriError 400 saying which, never an internal error.
    """
    merged: dict[str, str] = {}
    for key, value in request.query.items():
        merged.setdefault(key, value)
    if request.method == "POST" and request.body_exists:
        ctype = request.content_type
        if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            try:
                form = await _read_form(request)
            except (web.HTTPException, EsriError):
                raise  # 413 and friends keep their own answer
            except Exception as exc:  # noqa: BLE001 - aiohttp raises a dozen types for a malformed body
                raise EsriError(400, "Unable to read the request.", [body_problem(request, exc)]) from None
            form_values: dict[str, str] = {}
            for key, value in form.items():
                if isinstance(value, str):
                    form_values.setdefault(key, value)
                # uploaded files (FileField) are not GP parameters of this task; ignore them
            merged.update(form_values)
    request[PARAMS_KEY] = merged
    return merged


async def _read_form(request: web.Request) -> Mapping[str, Any]:
    """The form fields of the body. Compressed bodies are inflated here, not by aiohttp's parser (create_app
    turns that off): a body that fails to inflate is then this request's error, answered in the Esri shape,
    instead of a protocol error answered in plain text before any handler runs."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return await request.post()
    if coding not in _WBITS:
        raise EsriError(
            400,
            "Unable to read the request.",
            [f"Content-Encoding {coding} is not supported; send the body uncompressed (or as gzip or deflate)"],
        )
    if request.content_type != "application/x-www-form-urlencoded":
        raise EsriError(
            400,
            "Unable to read the request.",
            [f"a compressed {request.content_type} body is not supported; send it uncompressed"],
        )
    limit = getattr(request, "client_max_size", 1 << 20)
    inflater = zlib.decompressobj(_WBITS[coding])
    try:
        data = inflater.decompress(await request.read(), limit + 1)
    except zlib.error:
        raise EsriError(
            400,
            "Unable to read the request.",
            [f"the body cannot be decoded with Content-Encoding {coding}; send it uncompressed or valid {coding}"],
        ) from None
    if len(data) > limit:
        raise EsriError(413, "Request too large.", [f"the request body is larger than {limit} bytes"])
    if not inflater.eof:
        raise EsriError(
            400,
            "Unable to read the request.",
            [f"the body ends before its Content-Encoding {coding} stream does; send the whole body"],
        )
    charset = request.charset or "utf-8"
    return dict(parse_qsl(data.decode(charset), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS))


# zlib window bits per Content-Encoding: gzip framing, zlib framing (HTTP's "deflate"; +32 also takes gzip)
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}
MAX_FORM_FIELDS = 1000


def body_problem(request: web.Request, exc: Exception) -> str:
    """What was wrong with a request body that could not be read, and how to send it instead."""
    ctype = request.content_type
    if isinstance(exc, LookupError) and not isinstance(exc, UnicodeError):
        return f"the charset of the {ctype} body is not one this server knows; send UTF-8"
    if isinstance(exc, UnicodeError):
        return f"the {ctype} body is not valid {request.charset or 'UTF-8'} text; send UTF-8"
    if ctype == "multipart/form-data":
        return "the multipart/form-data body is malformed (boundary, part headers or part encoding)"
    return f"the {ctype} body is malformed"


def output_format(request: web.Request, *, default: str = "html") -> str:
    """`f` of the request: json | pjson | html (unknown values fall back to json for API safety).

    Without `f` ArcGIS answers html; we do so only for browsers (Accept: text/html), because scripts
    that omit `f` (curl, token probes) want JSON.
    """
    value = params(request).get("f", "").strip().lower()
    if not value:
        if default == "html" and "text/html" in request.headers.get("Accept", ""):
            return "html"
        return "json"
    return value if value in FORMATS else "json"


def _token(request: web.Request) -> str:
    """The caller's token, which an html page carries into its forms."""
    return params(request).get("token", "").strip()


def render(
    request: web.Request,
    data: Any,
    *,
    page: str | None = None,
    context: Mapping[str, Any] | None = None,
    default: str = "html",
) -> web.Response:
    """`data` as json/pjson, or the html `page` template given `data` (and `context`) when f=html."""
    fmt = output_format(request, default=default if page else "json")
    if fmt == "html" and page:
        page_context = {"token": _token(request), **dict(context or {})}
        return web.Response(
            text=render_page(page, request, data=data, **page_context), content_type="text/html", charset="utf-8"
        )
    return json_response(data, pretty=(fmt == "pjson"))


def render_error(request: web.Request, err: EsriError) -> web.Response:
    """The error as Esri JSON (HTTP 200 in Esri spaces), a real status elsewhere, or an html page."""
    fmt = output_format(request)
    if fmt == "html":
        return web.Response(
            text=render_page("error.html", request, token=_token(request), data=err.body()["error"]),
            status=err.http_status,
            content_type="text/html",
            charset="utf-8",
        )
    status = 200 if in_esri_space(request.path) else err.http_status
    return json_response(err.body(), pretty=(fmt == "pjson"), status=status)
