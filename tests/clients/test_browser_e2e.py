"""The html services directory in a real browser: headless Debian Chromium (driven by playwright-core) opens the
TrainDeepLearningModel task page of a real `gpjobs serve`, fills the form, submits, watches the job page refresh
to esriJobSucceeded and downloads the .dlpk through the page's link.

Screenshots (form, running job, finished job) are kept in test-artifacts/clients/browser/ (git-ignored).
Set-up: `apt-get install chromium` and `cd tests/clients && npm ci` (playwright-core only: it never downloads a
browser). Skipped when chromium, node or playwright-core is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from .server import BACKBONE, MODEL_TYPE, REPO_ROOT, GpjobsServer

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts" / "clients" / "browser"
pytestmark = [
    pytest.mark.clients, pytest.mark.slow, pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"chromium not found at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.skipif(not (HERE / "node_modules/playwright-core").is_dir(),
                       reason="playwright-core is not installed (cd tests/clients && npm ci)"),
]


def test_person_submits_the_html_form_and_downloads_the_package(http_server: GpjobsServer):
    fields = {"in_folder": http_server.export_path, "output_name": '{"name": "browserModel"}',
              "model_type": MODEL_TYPE, "backbone_model": BACKBONE, "batch_size": "4", "max_epochs": "1",
              "learning_rate": "0.001", "validation_percent": "25", "stop_training": "false"}
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    proc = subprocess.run(["node", str(HERE / "browser_job.mjs"), http_server.task_url, json.dumps(fields),
                           str(ARTIFACTS)], cwd=HERE, env={**os.environ, "CHROMIUM": CHROMIUM},
                          capture_output=True, text=True, timeout=840)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    assert proc.returncode == 0 and not report.get("error"), (
        f"browser run failed: {report}\n{proc.stderr[-3000:]}\n--- server log ---\n{http_server.log_tail()}")
    assert report["status"] == "esriJobSucceeded", report
    assert (ARTIFACTS / "3-job-finished.png").stat().st_size > 0
    assert report["download"]["name"] == "browserModel.dlpk"
    with zipfile.ZipFile(report["download"]["path"]) as package:
        assert any(name.endswith(".emd") for name in package.namelist())
