"""The real ArcGIS API for Python trains a tiny model through a real `gpjobs serve` (protocol.md §10).

1. `arcgis.geoprocessing.import_toolbox(<GPServer url>)` over plain HTTP, anonymous: the generated
   `train_deep_learning_model(...)` submits, polls and returns the `out_item` value `{"id": ...}`.
2. `arcgis.learn.train_model(..., gis=GIS("https://.../portal", token=..., verify_cert=False))` over HTTPS with
   token auth: returns the published `Item`, after the client's own `item.update(properties=...)`.

Needs `pip install arcgis` (a test-only dependency, ~420 MB with pandas/pyarrow/dask); skipped without it.
Each test trains FEATURE_CLASSIFIER/RESNET18 on 8 chips of 32 px for one epoch on the CPU.
"""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.harness.server import USERNAME, GpjobsServer

from .tiny_job import BACKBONE, EXPORT, MODEL_TYPE, is_item_reference

pytestmark = [pytest.mark.clients, pytest.mark.slow, pytest.mark.timeout(900)]
arcgis = pytest.importorskip("arcgis", reason="the arcgis client is not installed (pip install arcgis)")


def assert_dlpk_item(server: GpjobsServer, item_id: str, *, owner: str, title: str) -> None:
    """The item is in the portal, readable by its owner, and its data is a .dlpk holding an .emd."""
    item = server.get_json(f"/sharing/rest/content/items/{item_id}")
    assert item.get("type") == "Deep Learning Package", item
    assert item["owner"] == owner and item["title"] == title and item["name"] == f"{title}.dlpk"
    headers, body = server.fetch(f"/sharing/rest/content/items/{item_id}/data")
    assert f'filename="{title}.dlpk"' in headers.get("Content-Disposition", "")
    with zipfile.ZipFile(io.BytesIO(body)) as package:
        names = package.namelist()
    assert any(n.endswith(".emd") for n in names), names


def test_import_toolbox_trains_and_returns_out_item(http_server: GpjobsServer):
    from arcgis.geoprocessing import import_toolbox

    tbx = import_toolbox(http_server.service_url)
    try:
        value = tbx.train_deep_learning_model(
            in_folder=EXPORT,
            output_name={"name": "toolboxModel"},
            model_type=MODEL_TYPE,
            backbone_model=BACKBONE,
            batch_size=4,
            max_epochs=1,
            learning_rate=0.001,
            validation_percent=25,
            stop_training=False,
            freeze_model=True,
            overwrite_model=False,
        )
    except Exception as exc:
        pytest.fail(f"import_toolbox client failed: {exc!r}\n{http_server.diagnose()}")
    # The GPString value is served as an object (protocol.md §5.2) and the client hands it back as is.
    assert is_item_reference(value), value
    assert_dlpk_item(http_server, value["id"], owner="anonymous", title="toolboxModel")


def test_learn_train_model_returns_the_portal_item(https_server: GpjobsServer):
    from arcgis.gis import GIS, Item
    from arcgis.learn import train_model

    gis = GIS(f"{https_server.base_url}/portal", token=https_server.token, verify_cert=False)
    assert gis._con._product != "AGOL" and gis.users.me.username == USERNAME
    try:
        item = train_model(
            input_folder=EXPORT,
            model_type=MODEL_TYPE,
            backbone_model=BACKBONE,
            batch_size=4,
            max_epochs=1,
            learning_rate=0.001,
            validation_percent=25,
            stop_training=False,
            output_name="learnModel",
            gis=gis,
        )
    except Exception as exc:
        pytest.fail(f"arcgis.learn.train_model failed: {exc!r}\n{https_server.diagnose()}")
    assert isinstance(item, Item), item
    assert item.type == "Deep Learning Package" and item.owner == USERNAME and item.title == "learnModel"
    # The client's post-processing item.update reached the portal and was stored.
    stored = https_server.get_json(f"/sharing/rest/content/items/{item.id}")
    assert stored["properties"]["jobType"] == "GPServer" and stored["properties"]["jobStatus"] == "completed"
    job_id = stored["properties"]["jobId"]
    job = https_server.get_json(
        f"/arcgis/rest/services/System/RasterAnalysisTools/GPServer/TrainDeepLearningModel/jobs/{job_id}"
    )
    assert job["jobStatus"] == "esriJobSucceeded"
    assert_dlpk_item(https_server, item.id, owner=USERNAME, title="learnModel")
