"""Request id and error rendering middlewares: no stack trace ever reaches a client (nor, for a client's
malformed request, the server log)."""

from __future__ import annotations

import logging
import random
import re
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gpjobs.appkeys import CONFIG_KEY
from gpjobs.domain import GpJobsError, JobNotFound
from gpjobs.web.render import EsriError, in_esri_space, invalid_url, load_params, render_error

log = structlog.get_logger("gpjobs.web")
REQUEST_ID_HEADER = "X-Request-Id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("gpjobs_request_id", str)


@web.middleware
async def request_id_middleware(request: web.Request, handler):
    """Bind a request id (the caller's X-Request-Id when sane) to the logs and echo it back."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _SAFE_ID.match(incoming) else f"{random.getrandbits(64):016x}"  # a log key, not a secret
    request[REQUEST_ID_KEY] = request_id
    # bind + reset rather than bound_contextvars: that copies the whole log context twice per request
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _http_error(request: web.Request, exc: web.HTTPException) -> EsriError:
    if exc.status == 404:
        return invalid_url()
    if exc.status == 405:
        return EsriError(405, "Method not allowed.", [f"{request.method} is not supported here"])
    if exc.status == 413:
        return EsriError(413, "Request too large.", ["the request body is larger than the server accepts"])
    return EsriError(exc.status, exc.reason, [])


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Read the parameters once, then turn every failure into the Esri error shape (or a real status)."""
    try:
        limit = request.app[CONFIG_KEY].max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise EsriError(413, "Request too large.", [f"the request body is larger than {limit} bytes"])
        await load_params(request)
        return await handler(request)
    except EsriError as err:
        return render_error(request, err)
    except JobNotFound:
        return render_error(request, invalid_url())
    except GpJobsError as err:
        return render_error(request, EsriError(err.code, str(err), []))
    except web.HTTPException as exc:
        if exc.status < 400 or not (in_esri_space(request.path) or exc.status in (413,)):
            raise  # redirects, and plain 404s outside the Esri spaces
        return render_error(request, _http_error(request, exc))
    except Exception:  # noqa: BLE001 - log it, answer without internals
        log.exception("unhandled error", path=request.path, method=request.method)
        return render_error(
            request,
            EsriError(
                500,
                "Unable to complete operation.",
                [
                    "An internal error occurred; the server log has the details "
                    f"(request id {request.get(REQUEST_ID_KEY, '?')})."
                ],
            ),
        )


class ProtocolLog(logging.LoggerAdapter):
    """aiohttp's protocol-level log (`handler_args["logger"]`, see gpjobs.app).

    A request that is not valid HTTP (a bad request line, an invalid character in the URL or a header) is
    answered 400 by aiohttp before any handler runs; that is the client's error, so it is one warning line
    here rather than a traceback. Anything else aiohttp reports keeps its traceback.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.warning(
                "malformed HTTP request refused: %s (%s)",
                str(exc_info.message).splitlines()[0][:200],
                msg % args if args else msg,
            )
            return
        self.error(msg, *args, exc_info=exc_info, **kwargs)


# What create_app gives aiohttp's protocol handler: request bodies are inflated by the form reader
# (render._read_form), so a body that fails to inflate is an Esri error of that request.
HANDLER_ARGS: dict[str, Any] = {"auto_decompress": False, "logger": ProtocolLog()}
