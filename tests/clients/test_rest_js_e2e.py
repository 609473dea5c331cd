"""arcgis-rest-js (`@esri/arcgis-rest-request`'s `Job`) submits, polls and fetches the result from a real
`gpjobs serve` over HTTPS with token auth (token in the POST body, as the library sends it).

Set-up: `cd tests/clients && npm ci` (package.json pins 4.10.2: the registry mirror here lacks the
@esri/arcgis-rest-fetch release that 4.11.x needs). Skipped when node or the package is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .server import BACKBONE, MODEL_TYPE, USERNAME, GpjobsServer

HERE = Path(__file__).resolve().parent
pytestmark = [
    pytest.mark.clients, pytest.mark.slow, pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(not (HERE / "node_modules/@esri/arcgis-rest-request").is_dir(),
                       reason="@esri/arcgis-rest-request is not installed (cd tests/clients && npm ci)"),
]


def run_rest_job(server: GpjobsServer, params: dict) -> tuple[int, dict, str]:
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(server.cert)} if server.cert else dict(os.environ)
    proc = subprocess.run(["node", str(HERE / "rest_job.mjs"), server.task_url, server.token or "",
                           json.dumps(params)], cwd=HERE, env=env, capture_output=True, text=True, timeout=840)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    return proc.returncode, report, proc.stderr


def test_rest_js_job_submits_polls_and_gets_out_item(https_server: GpjobsServer):
    params = {"in_folder": https_server.export_path, "output_name": {"name": "restJsModel"},
              "model_type": MODEL_TYPE, "backbone_model": BACKBONE, "batch_size": 4, "max_epochs": 1,
              "learning_rate": 0.001, "validation_percent": 25, "stop_training": False}
    code, report, stderr = run_rest_job(https_server, params)
    assert code == 0, f"rest-js client failed: {report}\n{stderr}\n--- server log ---\n{https_server.log_tail()}"
    assert report["status"] == "Succeeded"
    assert report["statuses"][-1] == "Succeeded"
    value = report["out_item"]["value"]
    assert report["results"]["out_item"]["value"] == value and set(value) == {"id"}
    item = https_server.get_json(f"/sharing/rest/content/items/{value['id']}")
    assert item["owner"] == USERNAME and item["title"] == "restJsModel"


def test_rest_js_surfaces_a_bad_submit_as_an_error(https_server: GpjobsServer):
    code, report, _ = run_rest_job(https_server, {"in_folder": "/fileShares/nope/missing",
                                                  "output_name": {"name": "never"}, "model_type": MODEL_TYPE})
    assert code == 1 and report.get("error"), report
    assert "id" not in report or report["id"] is None  # no job was created
