"""HTML pages for people (f=html): jinja2 templates in gpjobs/web/templates, autoescaped."""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Any

import jinja2
import orjson
from aiohttp import web

TEMPLATES_DIR = Path(__file__).with_name("templates")


def _time(ms: int | None) -> str:
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = _time
    env.filters["pretty"] = _pretty
    return env


def render_page(name: str, request: web.Request, **context: Any) -> str:
    """The page `name` rendered with `context` (plus the request path; render.py passes the caller's token)."""
    context.setdefault("token_query", "")
    context.setdefault("token", "")
    context.setdefault("path", request.path)
    return environment().get_template(name).render(**context)
