"""A finished model's card, served straight from its package: `model_metrics.html` and the pictures in
`ModelCharacteristics/` (show_results.png, loss_graph.png, ...) are zip members of the .dlpk.

The job page links the card of a finished job; the item page shows it. Only those members can be named (a
fixed file or a plain `<name>.png`), and the html is sent with a sandboxing Content-Security-Policy: it is
a fragment written by the training child, shown but never trusted.
"""

from __future__ import annotations

import asyncio
import re
import zipfile
from pathlib import Path
from typing import Any

from aiohttp import web

from gpjobs.domain import Job, JobStatus
from gpjobs.web.gp_service import TASK_PATH
from gpjobs.web.render import EsriError

METRICS_HTML = "model_metrics.html"
SAMPLE_RESULTS = "show_results.png"
CHARACTERISTICS = "ModelCharacteristics"
_PICTURE = re.compile(r"^[A-Za-z0-9_-]{1,64}\.png$")
MAX_MEMBER_BYTES = 32 * 2**20
# The card may show its own inline styles and data: pictures, nothing else (no script, no requests).
CARD_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CARD_PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Model card</title>
<style>body{{font-family:system-ui,sans-serif;color:#222;margin:1rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2rem .5rem}}img{{max-width:100%}}</style></head><body>
{fragment}
</body></html>"""


def member_of(name: str) -> str:
    """The zip member a card file name stands for; EsriError for a name that is not part of a card."""
    if name == METRICS_HTML:
        return METRICS_HTML
    if _PICTURE.match(name):
        return f"{CHARACTERISTICS}/{name}"
    raise EsriError(
        400, "Invalid URL", [f"'{name}' is not part of a model card: use {METRICS_HTML} or {SAMPLE_RESULTS}"]
    )


def read_member(package: Path, member: str) -> bytes | None:
    """The member's bytes, or None when the package (or the member) does not exist."""
    try:
        with zipfile.ZipFile(package) as archive:
            info = archive.getinfo(member)
            if info.file_size > MAX_MEMBER_BYTES:
                return None
            return archive.read(info)
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


async def card_response(package: Path, name: str) -> web.Response:
    """The card file `name` of `package` as an HTTP response (html sandboxed, pictures as image/png)."""
    member = member_of(name)
    data = await asyncio.to_thread(read_member, package, member)
    if data is None:
        raise EsriError(
            400,
            f"The model package has no {name}.",
            ["Packages written by an older gpjobs may have no model card; train the model again."],
        )
    if member == METRICS_HTML:
        page = CARD_PAGE.format(fragment=data.decode("utf-8", "replace"))
        return web.Response(
            text=page,
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": CARD_CSP, "X-Content-Type-Options": "nosniff"},
        )
    return web.Response(body=data, content_type="image/png", headers={"X-Content-Type-Options": "nosniff"})


def card_base(job: Job) -> str | None:
    """Where a finished job's card is served: its item's card, or the job's own for a file-share output."""
    if job.status is not JobStatus.SUCCEEDED or not job.result:
        return None
    if job.result.get("id"):
        return f"/sharing/rest/content/items/{job.result['id']}/card"
    if job.result.get("uri"):
        return f"{TASK_PATH}/jobs/{job.job_id}/card"
    return None


def card_links(job: Job) -> dict[str, Any] | None:
    """The links the job page shows for a finished job's card (None before it has one)."""
    base = card_base(job)
    if base is None:
        return None
    return {"metrics": f"{base}/{METRICS_HTML}", "results": f"{base}/{SAMPLE_RESULTS}"}
