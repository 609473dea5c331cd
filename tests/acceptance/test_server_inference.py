"""Acceptance: the inference tasks on a real `gpjobs serve` with real children (the warm training child runs
them): outputs as items and share files, progress in blocks, cancel within a block, and a kill -9 of the
server mid-job that resumes from the blocks already written and ends with what one uninterrupted run writes."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from gpjobs import messages
from tests.builders.rasters import trained_package, write_raster
from tests.harness.server import GP_SERVICE, GpjobsServer, process_alive, processes_mentioning

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PIXELS, OBJECTS = "ClassifyPixelsUsingDeepLearning", "DetectObjectsUsingDeepLearning"
# 32-px tiles, 8 px of padding, 2 x 2 tiles a block: 32-px blocks, 10 x 10 = 100 of them over the big scene
MANY_BLOCKS = {"padding": "8", "batch_size": "4"}
BLOCKS = 100


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference-server")
    share, imagery = root / "share", root / "imagery"
    (share / "models").mkdir(parents=True)
    (share / "results").mkdir()
    for model_type in ("UNET", "SSD"):
        shutil.copy(trained_package(model_type), share / "models" / f"{model_type.lower()}.dlpk")
    write_raster(imagery / "scene.tif", width=96, height=64)
    write_raster(imagery / "big.tif", width=320, height=320, seed=3)
    srv = GpjobsServer(root, trainer="real", raster_stores={"imagery": imagery}, settings={"max_attempts": 2})
    try:
        yield srv.start()
    finally:
        srv.stop()


def job_url(task: str, job_id: str) -> str:
    return f"{GP_SERVICE}/{task}/jobs/{job_id}"


def wait_executing(server: GpjobsServer, task: str, job_id: str, percent: float, timeout: float = 120) -> dict:
    """The job once it is executing and at least `percent` done."""
    deadline = time.monotonic() + timeout
    while True:
        info = server.job(job_id, task)
        if info["jobStatus"] == "esriJobExecuting" and info.get("progress", {}).get("percentage", 0) >= percent:
            return info
        assert info["jobStatus"] in ("esriJobSubmitted", "esriJobWaiting", "esriJobExecuting"), server.diagnose(job_id)
        assert time.monotonic() < deadline, server.diagnose(job_id)
        time.sleep(0.05)


def test_classified_raster_item_downloads_as_a_georeferenced_geotiff(server: GpjobsServer) -> None:
    import rasterio

    job_id = server.submit_to(
        PIXELS,
        inputRaster='{"uri": "/rasterStores/imagery/scene.tif"}',
        model='{"uri": "/fileShares/default/models/unet.dlpk"}',
        outputClassifiedRaster='{"name": "classes"}',
        modelArguments='{"padding": "4"}',
    )["jobId"]
    info = server.wait(job_id, timeout=120, task=PIXELS)
    assert info["jobStatus"] == "esriJobSucceeded", server.diagnose(job_id)
    said = [m["description"] for m in info["messages"]]
    assert any(s.startswith("Processed ") and s.endswith("(100%).") for s in said), said
    assert said[-3].startswith("Inference finished: ") and said[-2] == messages.output_published(
        "Image", replaced=False
    )
    value = server.get_json(f"{job_url(PIXELS, job_id)}/results/outRaster")["value"]
    assert set(value) == {"itemId", "id"} and value["itemId"] == value["id"]
    item = server.get_json(f"/sharing/rest/content/items/{value['id']}")
    assert (item["type"], item["name"], item["url"]) == ("Image", "classes.tif", None)
    assert item["properties"]["resources"] == ["classes.tif.aux.xml"]
    _, body = server.fetch(f"/sharing/rest/content/items/{value['id']}/data")
    with rasterio.MemoryFile(io.BytesIO(body)) as memory, memory.open() as tif:
        with rasterio.open(server.raster_stores["imagery"] / "scene.tif") as scene:
            assert (tif.crs, tif.transform, tif.shape) == (scene.crs, scene.transform, scene.shape)
        assert tif.dtypes[0] == "uint8" and tif.colormap(1)[1][3] == 255  # class 1 has a colour
    _, rat = server.fetch(f"/sharing/rest/content/items/{value['id']}/resources/classes.tif.aux.xml")
    assert b"<GDALRasterAttributeTable" in rat and b"<Name>ClassName</Name>" in rat


def test_detected_objects_on_a_share_with_a_geopackage(server: GpjobsServer) -> None:
    import pyogrio

    job_id = server.submit_to(
        OBJECTS,
        inputRaster="/rasterStores/imagery/scene.tif",
        model="/fileShares/default/models/ssd.dlpk",
        runNMS="true",
        outputObjects='{"uri": "/fileShares/default/results/objects"}',
    )["jobId"]
    info = server.wait(job_id, timeout=120, task=OBJECTS)
    assert info["jobStatus"] == "esriJobSucceeded", server.diagnose(job_id)
    value = server.get_json(f"{job_url(OBJECTS, job_id)}/results/outObjects")["value"]
    assert value == {"uri": "/fileShares/default/results/objects.geojson"}
    results = server.shares["default"] / "results"
    collection = json.loads((results / "objects.geojson").read_text())
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32617"
    gpkg = pyogrio.read_info(results / "objects.gpkg")
    assert list(gpkg["fields"]) == ["Class", "Confidence", "ClassValue"]
    assert gpkg["features"] == len(collection["features"])


def test_cancel_stops_within_a_block(server: GpjobsServer) -> None:
    job_id = server.submit_to(
        PIXELS,
        inputRaster='{"uri": "/rasterStores/imagery/big.tif"}',
        model='{"uri": "/fileShares/default/models/unet.dlpk"}',
        outputClassifiedRaster='{"name": "cancelled"}',
        modelArguments=json.dumps(MANY_BLOCKS),
    )["jobId"]
    wait_executing(server, PIXELS, job_id, 5)
    asked = time.monotonic()
    assert server.post_json(f"{job_url(PIXELS, job_id)}/cancel")["jobStatus"] == "esriJobCancelling"
    info = server.wait(job_id, timeout=60, task=PIXELS)
    assert info["jobStatus"] == "esriJobCancelled" and time.monotonic() - asked < 10
    assert info["messages"][-1]["description"] == messages.CANCEL_COMPLETE


def test_kill_9_mid_job_resumes_from_the_blocks_written(server: GpjobsServer, tmp_path: Path) -> None:
    import rasterio

    from gpjobs.inference.host import run_inference

    model = server.shares["default"] / "models" / "unet.dlpk"
    job_id = server.submit_to(
        PIXELS,
        inputRaster='{"uri": "/rasterStores/imagery/big.tif"}',
        model='{"uri": "/fileShares/default/models/unet.dlpk"}',
        outputClassifiedRaster='{"uri": "/fileShares/default/results/resumed.tif"}',
        modelArguments=json.dumps(MANY_BLOCKS),
    )["jobId"]
    wait_executing(server, PIXELS, job_id, 25)
    children = processes_mentioning(job_id)
    server.kill()
    deadline = time.monotonic() + 15
    while any(process_alive(pid) for pid in children):  # the child notices its lifeline and stops
        assert time.monotonic() < deadline, "the inference child survived the server's kill -9"
        time.sleep(0.05)
    server.start()
    info = server.wait(job_id, timeout=300, task=PIXELS)
    assert info["jobStatus"] == "esriJobSucceeded", server.diagnose(job_id)
    said = [m["description"] for m in info["messages"]]
    resumed = [s for s in said if s.startswith("Resumed: ")]
    assert len(resumed) == 1, said
    kept = int(resumed[0].split()[1])
    # killed at 25% (the job resource rounds): those blocks were not computed again
    assert 0.24 * BLOCKS <= kept < BLOCKS, said
    # ...and the raster is the one an uninterrupted run writes
    whole = run_inference(
        model,
        [server.raster_stores["imagery"] / "big.tif"],
        tmp_path / "whole.tif",
        arguments={k: int(v) for k, v in MANY_BLOCKS.items()},
    )
    with rasterio.open(whole.output) as a, rasterio.open(server.shares["default"] / "results" / "resumed.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.transform == b.transform
