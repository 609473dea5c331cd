"""Run the JavaScript clients (node scripts next to this file) and read their one-line JSON reports."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

needs_rest_js = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (HERE / "node_modules/@esri/arcgis-rest-request").is_dir(),
        reason="@esri/arcgis-rest-request is not installed (cd tests/clients && npm ci)",
    ),
]
needs_browser = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    ),
    pytest.mark.skipif(
        not (HERE / "node_modules/playwright-core").is_dir(),
        reason="playwright-core is not installed (cd tests/clients && npm ci)",
    ),
]


async def _node(script: str, *args: str, env: dict[str, str], timeout: float) -> tuple[int, dict, str]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(HERE / script),
        *args,
        cwd=HERE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
    return proc.returncode or 0, (json.loads(lines[-1]) if lines else {}), err.decode(errors="replace")[-3000:]


async def run_rest_job(
    task_url: str,
    token: str | None,
    params: dict,
    *,
    cert: Path | None = None,
    timeout: float = 840,
    result: str = "out_item",
) -> tuple[int, dict, str]:
    """@esri/arcgis-rest-request's Job: submit, poll every 0.5 s, fetch all results and the `result` output."""
    env = dict(os.environ)
    if cert is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(cert)  # full TLS verification against our own certificate
    return await _node("rest_job.mjs", task_url, token or "", json.dumps(params), result, env=env, timeout=timeout)


async def run_browser_job(
    task_url: str, fields: dict, artifacts: Path, *, timeout: float = 840
) -> tuple[int, dict, str]:
    """Headless Chromium fills and submits the task's html form, then follows the job page to the end."""
    shutil.rmtree(artifacts, ignore_errors=True)
    env = {**os.environ, "CHROMIUM": CHROMIUM, "BROWSER_JOB_TIMEOUT_MS": str(int((timeout - 60) * 1000))}
    return await _node("browser_job.mjs", task_url, json.dumps(fields), str(artifacts), env=env, timeout=timeout)


async def run_job_page_look(job_url: str, artifacts: Path, *, timeout: float = 840) -> tuple[int, dict, str]:
    """Headless Chromium watches a job page to the end, then opens the item page (screenshots in `artifacts`)."""
    shutil.rmtree(artifacts, ignore_errors=True)
    env = {**os.environ, "CHROMIUM": CHROMIUM, "JOB_PAGE_TIMEOUT_MS": str(int((timeout - 60) * 1000))}
    return await _node("job_page_look.mjs", job_url, str(artifacts), env=env, timeout=timeout)
