"""The inference tasks over HTTP (web layer, real store, recording scheduler, portal): submit checks that need
the store (model item, output item), the job resource under its own task, and the portal's empty service
items that arcgis' raster analysis functions create first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gpjobs.appkeys import STORE_KEY
from gpjobs.domain import ITEM_TYPE_IMAGE, Item, new_item_id
from gpjobs.store import Store
from tests.builders.rasters import write_emd_package, write_raster
from tests.clients.store_helpers import publish_item
from tests.harness.app import app_config, make_app, start_app

SERVICE = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer"
PIXELS = f"{SERVICE}/ClassifyPixelsUsingDeepLearning"
SCENE = '{"uri": "/rasterStores/imagery/scene.tif"}'


class Portal:
    def __init__(self, client: TestClient, share: Path) -> None:
        self.client, self.share = client, share

    @property
    def store(self) -> Store:
        return self.client.app[STORE_KEY]

    async def post(self, path: str, **data: str) -> Any:
        resp = await self.client.post(path, data={"f": "json", **data})
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def classify(self, **fields: str) -> Any:
        return await self.post(
            f"{PIXELS}/submitJob", **{"inputRaster": SCENE, "outputClassifiedRaster": '{"name": "classes"}', **fields}
        )


@pytest.fixture()
async def portal(tmp_path: Path):
    share, imagery = tmp_path / "share", tmp_path / "imagery"
    write_raster(imagery / "scene.tif")
    write_emd_package(share / "models" / "unet.dlpk")
    app = make_app(app_config(tmp_path, file_shares={"default": str(share)}, raster_stores={"imagery": str(imagery)}))
    client = await start_app(app)
    yield Portal(client, share)
    await client.close()


async def test_model_items_are_checked_at_submit(portal: Portal) -> None:
    unet = await publish_item(portal.store, "anonymous", "unet", portal.share / "models" / "unet.dlpk")
    other = await publish_item(portal.store, "someone", "theirs", portal.share / "models" / "unet.dlpk")
    image = await portal.store.create_item(
        Item(id=new_item_id(), owner="anonymous", title="pic", name="pic.tif", type=ITEM_TYPE_IMAGE, path="")
    )
    ok = await portal.classify(model=json.dumps({"itemId": unet.id}))
    job = await portal.store.get_job(ok["jobId"])
    assert job.task == "ClassifyPixelsUsingDeepLearning" and job.model_type == "UNET"
    assert job.spec["model"]["path"] == unet.path and job.spec["inference_function"] == "GpjobsPixelClassifier.py"
    # anonymous is the admin of a loopback server: it sees every item; a user would not see `other`
    assert "jobId" in await portal.classify(model=json.dumps({"itemId": other.id}))
    wrong = await portal.classify(model=json.dumps({"itemId": image.id}))
    assert wrong["error"]["details"] == [
        f"model: item {image.id} ('pic') is a Image item, not a Deep Learning "
        "Package (.dlpk); give the item of a trained model"
    ]
    missing = await portal.classify(model="f" * 32)
    assert missing["error"]["details"] == [f"model: item {'f' * 32} does not exist or is not accessible to you"]
    assert await portal.store.queued_count() == 2  # the refused ones were never queued


async def test_output_items_fill_what_the_client_created(portal: Portal) -> None:
    model = '{"uri": "/fileShares/default/models/unet.dlpk"}'
    free = await portal.post("/sharing/rest/portals/self/isServiceNameAvailable", name="classes", type="Image Service")
    assert free == {"available": True}
    created = await portal.post(
        "/sharing/rest/content/users/anonymous/createService",
        outputType="imageService",
        createParameters=json.dumps({"name": "classes"}),
    )
    assert created["success"] is True and created["serviceurl"] is None
    taken = await portal.post("/sharing/rest/portals/self/isServiceNameAvailable", name="classes", type="imageService")
    assert taken == {"available": False}
    item = await portal.post(f"/sharing/rest/content/items/{created['itemId']}")
    assert (item["type"], item["title"], item["owner"]) == ("Image Service", "classes", "anonymous")
    no_data = await portal.post(f"/sharing/rest/content/items/{created['itemId']}/data")
    assert no_data["error"]["message"] == "The item has no data yet."
    fill = json.dumps({"serviceProperties": {"name": "classes"}, "itemProperties": {"itemId": created["itemId"]}})
    job = await portal.store.get_job((await portal.classify(model=model, outputClassifiedRaster=fill))["jobId"])
    assert job.spec["output"]["replace_item_id"] == created["itemId"] and job.spec["output"]["name"] == "classes"
    dlpk = await publish_item(portal.store, "anonymous", "model", portal.share / "models" / "unet.dlpk")
    not_fillable = await portal.classify(
        model=model, outputClassifiedRaster=json.dumps({"itemProperties": {"itemId": dlpk.id}})
    )
    assert not_fillable["error"]["details"] == [
        f"outputClassifiedRaster: item {dlpk.id} ('model') is a Deep Learning Package item; this task fills "
        "Image or Image Service items"
    ]
    await portal.store.create_item(
        Item(id=new_item_id(), owner="anonymous", title="old", name="old.tif", type=ITEM_TYPE_IMAGE, path="")
    )
    clash = await portal.classify(model=model, outputClassifiedRaster='{"name": "old"}')
    assert clash["error"]["details"][0].startswith("outputClassifiedRaster: you already have an Image item named 'old'")
    deleted = await portal.post(f"/sharing/rest/content/users/anonymous/items/{created['itemId']}/delete")
    assert deleted["success"] is True and await portal.store.get_item(created["itemId"]) is None


async def test_a_job_lives_under_its_own_task(portal: Portal) -> None:
    job_id = (await portal.classify(model='{"uri": "/fileShares/default/models/unet.dlpk"}'))["jobId"]
    body = await portal.post(f"{PIXELS}/jobs/{job_id}")
    assert body["jobStatus"] == "esriJobSubmitted"
    inputs = await portal.post(f"{PIXELS}/jobs/{job_id}/inputs/inputRaster")
    assert inputs == {"paramName": "inputRaster", "dataType": "GPString", "value": SCENE}
    elsewhere = await portal.post(f"{SERVICE}/TrainDeepLearningModel/jobs/{job_id}")
    assert elsewhere["error"]["message"] == "Invalid URL"
    execute = await portal.post(f"{PIXELS}/execute")
    assert execute["error"]["message"] == "ClassifyPixelsUsingDeepLearning is an asynchronous task: use submitJob."
    page = await portal.client.get(f"{PIXELS}/jobs/{job_id}", params={"f": "html"})
    text = await page.text()
    assert "Classify Pixels Using Deep Learning" in text and f'href="{PIXELS}?f=html' in text
    form = await (await portal.client.get(PIXELS, params={"f": "html"})).text()
    assert f'action="{PIXELS}/submitJob"' in form and 'name="outputClassifiedRaster"' in form
    assert job_id in form  # the task page lists its recent jobs
