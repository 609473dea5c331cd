"""End to end over HTTP: create_app (real store, real scheduler, fake training child subprocess).

The request sequence is what the arcgis client's import_toolbox path sends (protocol.md §10).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gpjobs.app import create_app
from tests.builders.exports import write_classified_tiles
from tests.harness.app import FAKE_TRAINER_COMMAND, app_config, start_app

SERVICE = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer"
TASK = f"{SERVICE}/TrainDeepLearningModel"
ADMIN = "/arcgis/admin/services/System/RasterAnalysisTools.GPServer/jobs"
TERMINAL = {"esriJobSucceeded", "esriJobFailed", "esriJobTimedOut", "esriJobCancelled"}


async def start(tmp_path: Path, **settings) -> TestClient:
    share = tmp_path / "share"
    write_classified_tiles(share / "exports", n=2, name="seg")
    (share / "models").mkdir()
    config = app_config(
        tmp_path,
        file_shares={"default": str(share)},
        trainer_command=FAKE_TRAINER_COMMAND,
        progress_flush_s=0.1,
        cancel_grace_s=1,
        shutdown_grace_s=2,
        **settings,
    )
    return await start_app(create_app(config))  # the product's own factory: real store and scheduler


def client_form(**fields: str) -> dict[str, str]:
    """Every declared input, "" when unset, as the arcgis client sends them."""
    form = {
        name: ""
        for name in (
            "in_folder",
            "output_name",
            "model_type",
            "arguments",
            "batch_size",
            "max_epochs",
            "learning_rate",
            "backbone_model",
            "validation_percent",
            "pretrained_model",
            "stop_training",
            "overwrite_model",
            "context",
            "freeze_model",
        )
    }
    form.update(
        in_folder="/fileShares/default/exports/seg",
        output_name=json.dumps({"name": "roofs"}),
        model_type="UNET",
        max_epochs="2",
        backbone_model="RESNET18",
        stop_training="true",
        overwrite_model="false",
        freeze_model="true",
        context='{"processorType": "CPU"}',
        f="json",
    )
    form.update(fields)
    return form


async def get_json(client: TestClient, path: str, **kw) -> dict:
    resp = await client.get(path, **kw)
    assert resp.status == 200 and "json" in resp.headers["Content-Type"]
    return await resp.json()


async def wait_for(client: TestClient, job_id: str, statuses: set[str], timeout: float = 60, **kw) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = await get_json(client, f"{TASK}/jobs/{job_id}", params={"f": "json"}, **kw)
        assert "error" not in body, body
        if body["jobStatus"] in statuses:
            return body
        assert time.monotonic() < deadline, f"job stuck in {body['jobStatus']}: {body.get('messages')}"
        await asyncio.sleep(0.05)  # an in-process app: polling is cheap, waiting is not


async def test_submit_poll_result_download(tmp_path: Path) -> None:
    client = await start(tmp_path)
    try:
        assert (await get_json(client, SERVICE, params={"f": "json"}))["tasks"] == [
            "TrainDeepLearningModel",
            "ClassifyPixelsUsingDeepLearning",
            "DetectObjectsUsingDeepLearning",
            "ClassifyObjectsUsingDeepLearning",
            "DetectChangeUsingDeepLearning",
        ]
        resp = await client.post(f"{TASK}/submitJob", data=client_form(**{"env:outSR": "4326"}))
        sub = await resp.json()
        assert sub["jobStatus"] == "esriJobSubmitted", sub
        done = await wait_for(client, sub["jobId"], TERMINAL)
        assert done["jobStatus"] == "esriJobSucceeded", done["messages"]
        texts = [m["description"] for m in done["messages"]]
        assert texts[0] == "Submitted." and "Executing..." in texts and "Training Finished" in texts
        result = await get_json(
            client, f"{TASK}/jobs/{sub['jobId']}/{done['results']['out_item']['paramUrl']}", params={"f": "json"}
        )
        item_id = result["value"]["itemId"]
        assert result["value"]["id"] == item_id and "url" not in result["value"]
        data = await client.get(f"/sharing/rest/content/items/{item_id}/data")
        assert data.status == 200 and len(await data.read()) > 0
        page = await client.get(f"{TASK}/jobs/{sub['jobId']}", params={"f": "html"})
        assert f"/sharing/rest/content/items/{item_id}/data" in await page.text()
    finally:
        await client.close()


async def test_file_share_output(tmp_path: Path) -> None:
    client = await start(tmp_path)
    try:
        resp = await client.post(
            f"{TASK}/submitJob", data=client_form(output_name='{"uri": "/fileShares/default/models/roofs"}')
        )
        sub = await resp.json()
        done = await wait_for(client, sub["jobId"], TERMINAL)
        assert done["jobStatus"] == "esriJobSucceeded", done["messages"]
        result = await get_json(client, f"{TASK}/jobs/{sub['jobId']}/results/out_item", params={"f": "json"})
        assert result["value"] == {"uri": "/fileShares/default/models/roofs/roofs.dlpk"}
        assert (tmp_path / "share" / "models" / "roofs" / "roofs.dlpk").is_file()
    finally:
        await client.close()


async def test_cancel_a_running_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPJOBS_FAKE_BEHAVIOUR", "slow")
    monkeypatch.setenv("GPJOBS_FAKE_EPOCH_S", "2")
    client = await start(tmp_path)
    try:
        resp = await client.post(f"{TASK}/submitJob", data=client_form(max_epochs="50"))
        job_id = (await resp.json())["jobId"]
        await wait_for(client, job_id, {"esriJobExecuting"})
        cancel = await get_json(client, f"{TASK}/jobs/{job_id}/cancel", params={"f": "json"})
        assert cancel["jobId"] == job_id and cancel["jobStatus"] in ("esriJobCancelling", "esriJobCancelled")
        done = await wait_for(client, job_id, TERMINAL, timeout=30)
        assert done["jobStatus"] == "esriJobCancelled"
    finally:
        await client.close()


async def test_secured_server_users_and_admin(tmp_path: Path) -> None:
    client = await start(tmp_path, host="0.0.0.0", anonymous=False)
    try:
        from gpjobs.appkeys import STORE_KEY

        store = client.server.app[STORE_KEY]
        alice, bob = await store.create_token("alice"), await store.create_token("bob")
        admin = await store.create_token("root", "admin")
        assert (await (await client.post(f"{TASK}/submitJob", data=client_form())).json())["error"]["code"] == 499
        resp = await client.post(
            f"{TASK}/submitJob", data=client_form(), headers={"X-Esri-Authorization": f"Bearer {alice}"}
        )
        job_id = (await resp.json())["jobId"]
        done = await wait_for(client, job_id, TERMINAL, headers={"Authorization": f"Bearer {alice}"})
        assert done["jobStatus"] == "esriJobSucceeded"
        hidden = await get_json(client, f"{TASK}/jobs/{job_id}", params={"f": "json", "token": bob})
        assert hidden["error"]["message"] == "Invalid URL"
        listing = await get_json(client, f"{ADMIN}/query", params={"f": "json", "token": admin, "userName": "alice"})
        assert [r["jobID"] for r in listing["results"]] == [job_id]
    finally:
        await client.close()
