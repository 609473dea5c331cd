"""Real clients run the inference tasks on a real `gpjobs serve` (HTTPS, token auth), unchanged:

1. `arcgis.learn.classify_pixels(...)` and `arcgis.learn.detect_objects(...)` (arcgis 2.4.4, what
   `arcgis.raster.analytics` offers for these tasks): each first creates an empty Image / Feature Service item
   (portal `createService`), submits the task naming that item, polls, then updates the filled item and returns it.
2. `@esri/arcgis-rest-request`'s `Job.submitJob` for ClassifyPixelsUsingDeepLearning, reading `outRaster`.

Needs `pip install arcgis` and `cd tests/clients && npm ci`; each part skips without its client.
"""

from __future__ import annotations

import io
import shutil

import pytest

from tests.builders.rasters import trained_package, write_raster
from tests.harness.server import GP_SERVICE, USERNAME, GpjobsServer

from .drivers import needs_rest_js, run_rest_job

pytestmark = [pytest.mark.clients, pytest.mark.slow, pytest.mark.timeout(900)]
SCENE = "/rasterStores/imagery/scene.tif"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference-clients")
    share, imagery = root / "share", root / "imagery"
    (share / "models").mkdir(parents=True)
    for model_type in ("UNET", "SSD"):
        shutil.copy(trained_package(model_type), share / "models" / f"{model_type.lower()}.dlpk")
    write_raster(imagery / "scene.tif", width=64, height=64)
    srv = GpjobsServer(
        root,
        trainer="real",
        shares={"share": share},
        raster_stores={"imagery": imagery},
        tls=True,
        auth=True,
        settings={"max_attempts": 1},
    )
    try:
        yield srv.start()
    finally:
        srv.stop()


def test_arcgis_learn_classify_pixels_and_detect_objects(server: GpjobsServer) -> None:
    pytest.importorskip("arcgis", reason="the arcgis client is not installed (pip install arcgis)")
    import rasterio
    from arcgis.gis import GIS, Item
    from arcgis.learn import classify_pixels, detect_objects

    gis = GIS(f"{server.base_url}/portal", token=server.token, verify_cert=False)
    try:
        classified = classify_pixels(
            SCENE,
            "/fileShares/share/models/unet.dlpk",
            model_arguments={"padding": 4},
            output_name="arcgisClasses",
            gis=gis,
        )
        objects = detect_objects(
            SCENE,
            "/fileShares/share/models/ssd.dlpk",
            output_name="arcgisObjects",
            run_nms=True,
            confidence_score_field="Confidence",
            max_overlap_ratio=0.3,
            gis=gis,
        )
    except Exception as exc:
        pytest.fail(f"arcgis client failed: {exc!r}\n{server.diagnose()}")
    assert isinstance(classified, Item) and isinstance(objects, Item)
    assert (classified.type, classified.owner, classified.title) == ("Image", USERNAME, "arcgisClasses")
    assert (objects.type, objects.title) == ("GeoJson", "arcgisObjects")
    for item, task in ((classified, "ClassifyPixelsUsingDeepLearning"), (objects, "DetectObjectsUsingDeepLearning")):
        stored = server.get_json(f"/sharing/rest/content/items/{item.id}")
        # the client created the (empty service) item, the job filled it, the client's update reached it
        assert stored["properties"]["task"] == task and stored["properties"]["jobStatus"] == "completed"
        job = server.get_json(f"{GP_SERVICE}/{task}/jobs/{stored['properties']['jobId']}")
        assert job["jobStatus"] == "esriJobSucceeded"
    _, body = server.fetch(f"/sharing/rest/content/items/{classified.id}/data")
    with rasterio.MemoryFile(io.BytesIO(body)) as memory, memory.open() as tif:
        assert tif.crs.to_epsg() == 32617 and tif.shape == (64, 64)
    gpkg = server.get_json(f"/sharing/rest/content/items/{objects.id}")["properties"]["resources"]
    assert gpkg == ["arcgisObjects.gpkg"]


@needs_rest_js[0]
@needs_rest_js[1]
async def test_rest_js_job_runs_classify_pixels(server: GpjobsServer) -> None:
    params = {
        "inputRaster": {"uri": SCENE},
        "model": {"uri": "/fileShares/share/models/unet.dlpk"},
        "outputClassifiedRaster": {"name": "restJsClasses"},
        "modelArguments": {"padding": 4},
    }
    code, report, stderr = await run_rest_job(
        f"{server.service_url}/ClassifyPixelsUsingDeepLearning",
        server.token,
        params,
        cert=server.cert,
        result="outRaster",
    )
    assert code == 0, f"rest-js client failed: {report}\n{stderr}\n{server.diagnose(report.get('id'))}"
    assert report["status"] == "Succeeded" and report["results"]["outRaster"]["value"] == report["result"]["value"]
    item = server.get_json(f"/sharing/rest/content/items/{report['result']['value']['id']}")
    assert (item["owner"], item["title"], item["type"]) == (USERNAME, "restJsClasses", "Image")
