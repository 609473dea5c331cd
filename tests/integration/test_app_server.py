"""create_app wiring, the serve command's fail-fast checks, and log redaction."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from gpjobs.app import create_app
from gpjobs.appkeys import SCHEDULER_KEY, STORE_KEY
from gpjobs.logging import AccessLogger, configure_logging, redact

ROOT = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer"


async def test_app_opens_store_runs_scheduler_and_closes_in_order(make_config):
    config = make_config()
    app = create_app(config)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        store, scheduler = app[STORE_KEY], app[SCHEDULER_KEY]
        assert config.content_dir.is_dir() and config.jobs_dir.is_dir() and config.file_shares["default"].is_dir()
        assert await store.schema_version() >= 1 and scheduler.slots[0].device == "cpu"
        resp = await client.get(ROOT, params={"f": "json"})
        assert resp.status == 200 and "TrainDeepLearningModel" in (await resp.json())["tasks"]
    finally:
        await client.close()
    assert scheduler._stopping  # the scheduler stopped before the store closed (cleanup_ctx order)


def test_serve_refuses_anonymous_on_a_public_bind(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "gpjobs.cli", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "loopback" in out.stderr
    assert not (tmp_path / "gpjobs.sqlite3").exists()


@pytest.mark.slow  # two fresh interpreters
def test_token_cli_creates_a_usable_token(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpjobs.cli",
            "token",
            "create",
            "--user",
            "ana",
            "--admin",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.startswith("gpj_")
    listing = subprocess.run(
        [sys.executable, "-m", "gpjobs.cli", "token", "list", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ana\tadmin\t1 token(s)" in listing.stdout
    assert out.stdout.strip() not in (tmp_path / "gpjobs.sqlite3").read_bytes().decode("latin-1")


def test_logs_are_json_and_never_carry_tokens():
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    try:
        structlog.get_logger("t").info(
            "request", url="/x?f=json&token=SECRET1", token="SECRET2", header="Bearer SECRET3"
        )

        class Req:
            method, path_qs, remote = "GET", "/jobs/j1?token=SECRET4&f=json", "127.0.0.1"

        class Resp:
            status, body_length, headers = 200, 10, {"X-Request-Id": "r1"}

        AccessLogger(None, "").log(Req(), Resp(), 0.001)
    finally:
        configure_logging("info")
    text = stream.getvalue()
    assert not any(f"SECRET{i}" in text for i in range(1, 5)), text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["event"] == "request" and lines[0]["url"] == "/x?f=json&token=***"
    assert lines[1]["path"] == "/jobs/j1?token=***&f=json" and lines[1]["request_id"] == "r1"
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
