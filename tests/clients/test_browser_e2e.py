"""The html services directory in a real browser: headless Debian Chromium (driven by playwright-core) opens the
TrainDeepLearningModel task page of a real `gpjobs serve`, fills the form, submits, watches the job page refresh
to esriJobSucceeded while a tiny real model trains, and downloads the .dlpk through the page's link.

Screenshots (form, running job, finished job) are kept in test-artifacts/clients/browser-e2e/ (git-ignored).
Set-up: `apt-get install chromium` and `cd tests/clients && npm ci` (playwright-core only: it never downloads a
browser). Skipped when chromium, node or playwright-core is missing.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.harness.server import REPO_ROOT, GpjobsServer

from .drivers import needs_browser, run_browser_job
from .tiny_job import BACKBONE, EXPORT, MODEL_TYPE

ARTIFACTS = REPO_ROOT / "test-artifacts" / "clients" / "browser-e2e"
pytestmark = [pytest.mark.clients, pytest.mark.slow, pytest.mark.timeout(900), *needs_browser]


async def test_person_submits_the_html_form_and_downloads_the_package(http_server: GpjobsServer):
    fields = {
        "in_folder": EXPORT,
        "output_name": '{"name": "browserModel"}',
        "model_type": MODEL_TYPE,
        "backbone_model": BACKBONE,
        "batch_size": "4",
        "max_epochs": "1",
        "learning_rate": "0.001",
        "validation_percent": "25",
        "stop_training": "false",
    }
    code, report, stderr = await run_browser_job(http_server.task_url, fields, ARTIFACTS)
    assert code == 0 and not report.get("error"), f"browser run failed: {report}\n{stderr}\n{http_server.diagnose()}"
    assert report["status"] == "esriJobSucceeded", report
    assert (ARTIFACTS / "3-job-finished.png").stat().st_size > 0
    assert report["download"]["name"] == "browserModel.dlpk"
    package_path = Path(report["download"]["path"])
    with zipfile.ZipFile(package_path) as package:
        assert any(name.endswith(".emd") for name in package.namelist())
    package_path.unlink()  # ~90 MB; the screenshots are the artifact worth keeping
