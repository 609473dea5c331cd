"""structlog JSON logs on stderr (job_id / request_id bound through contextvars), tokens redacted.

aiohttp's own loggers (including the access log) are routed through the same JSON renderer, and the
access logger used by `gpjobs serve` drops the query string's `token=` value (aiohttp's default `%r`
logs the full request line).
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

_TOKEN_IN_TEXT = re.compile(r"(?i)(token=|bearer\s+)[^&\s\"']+")
_SECRET_KEYS = frozenset({"token", "authorization", "x-esri-authorization", "password"})


def redact(text: str) -> str:
    """Replace token values in a query string, a header or a log line by `***`."""
    return _TOKEN_IN_TEXT.sub(lambda m: m.group(1) + "***", text)


def _redact_event(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in list(event.items()):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
        elif isinstance(value, str) and ("token" in value.lower() or "bearer" in value.lower()):
            event[key] = redact(value)
    return event


def _json(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode("utf-8")


_STATE: dict[str, Any] = {"stream": sys.stderr, "access": True}

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.add_logger_name,
    _redact_event,
]


def configure_logging(level: str = "info", *, stream: Any = None) -> None:
    """JSON lines at `level` on `stream` (stderr) for structlog and stdlib loggers alike."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    _STATE.update(stream=stream or sys.stderr, access=numeric <= logging.INFO)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=_json),
            ],
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *_SHARED],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )


class AccessLogger(AbstractAccessLogger):
    """One JSON access line per request, without secrets (query tokens are masked).

    Written straight to the log stream as one orjson line: going through logging + structlog's
    formatter cost about as much as answering a status poll.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        line = {
            "event": "access",
            "method": request.method,
            "path": redact(request.path_qs),
            "status": response.status,
            "ms": round(time * 1000, 2),
            "remote": request.remote,
            "bytes": response.body_length,
            "request_id": response.headers.get("X-Request-Id"),
            "level": "info",
            "logger": "gpjobs.access",
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        try:
            _STATE["stream"].write(orjson.dumps(line).decode("utf-8") + "\n")
        except (OSError, ValueError):  # a closed stream must not fail the request
            pass
