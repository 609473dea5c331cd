"""arcgis-rest-js (`@esri/arcgis-rest-request`'s `Job`) submits, polls and fetches the result from a real
`gpjobs serve` over HTTPS with token auth (token in the POST body, as the library sends it), training a tiny
real model.

Set-up: `cd tests/clients && npm ci` (package.json pins 4.10.2: the registry mirror here lacks the
@esri/arcgis-rest-fetch release that 4.11.x needs). Skipped when node or the package is missing.
"""

from __future__ import annotations

import pytest

from tests.harness.server import USERNAME, GpjobsServer

from .drivers import needs_rest_js, run_rest_job
from .tiny_job import BACKBONE, EXPORT, MODEL_TYPE, is_item_reference

pytestmark = [pytest.mark.clients, pytest.mark.slow, pytest.mark.timeout(900), *needs_rest_js]


async def test_rest_js_job_submits_polls_and_gets_out_item(https_server: GpjobsServer):
    params = {
        "in_folder": EXPORT,
        "output_name": {"name": "restJsModel"},
        "model_type": MODEL_TYPE,
        "backbone_model": BACKBONE,
        "batch_size": 4,
        "max_epochs": 1,
        "learning_rate": 0.001,
        "validation_percent": 25,
        "stop_training": False,
    }
    code, report, stderr = await run_rest_job(https_server.task_url, https_server.token, params, cert=https_server.cert)
    assert code == 0, f"rest-js client failed: {report}\n{stderr}\n{https_server.diagnose(report.get('id'))}"
    assert report["status"] == "Succeeded" and report["statuses"][-1] == "Succeeded"
    value = report["out_item"]["value"]
    assert report["results"]["out_item"]["value"] == value and is_item_reference(value)
    item = https_server.get_json(f"/sharing/rest/content/items/{value['id']}")
    assert item["owner"] == USERNAME and item["title"] == "restJsModel"
