"""The real ArcGIS API for Python (`arcgis` on PyPI) signs in to the portal emulation over HTTPS.

In-process: the web app without a scheduler (tests/harness/app.py) on a TLS loopback TestServer (certificate
from `gpjobs cert`'s writer), the synchronous client in a worker thread. The end-to-end training run is in
test_arcgis_e2e.py.
Install the client with `.venv/bin/pip install arcgis` (test-only dependency); skipped without it.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from gpjobs.commands.cert import CERT_NAME, KEY_NAME, write_self_signed
from gpjobs.store import Store
from tests.harness.app import app_config, make_app, start_app

from .store_helpers import publish_item

pytestmark = pytest.mark.clients
arcgis_gis = pytest.importorskip("arcgis.gis", reason="the arcgis client is not installed (pip install arcgis)")


async def test_arcgis_gis_signs_in_finds_raster_analytics_and_updates_the_item(tmp_path):
    write_self_signed(tmp_path, ["127.0.0.1", "localhost"])
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / CERT_NAME, tmp_path / KEY_NAME)
    store = await Store.open(tmp_path / "gpjobs.sqlite3")
    app = make_app(app_config(tmp_path, anonymous=False), store=store, scheduler=None)
    token = await store.create_token("analyst", "user")
    dlpk = tmp_path / "trainedModel.dlpk"
    dlpk.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    record = await publish_item(store, "analyst", "trainedModel", dlpk)
    client = await start_app(app, ssl=tls)
    url = f"https://127.0.0.1:{client.port}"
    job_id = "j" + "b" * 32

    def drive_client() -> dict:
        gis = arcgis_gis.GIS(f"{url}/portal", token=token, verify_cert=False)
        item = arcgis_gis.Item(gis, record.id)
        # What arcgis' GPJob._process_ra does with an RA job's {"id": ...} result.
        updated = item.update(
            item_properties={
                "properties": {
                    "jobUrl": f"{url}/jobs/{job_id}",
                    "jobType": "GPServer",
                    "jobId": job_id,
                    "jobStatus": "completed",
                }
            }
        )
        return {
            "product": gis._con._product,
            "me": gis.users.me.username,
            "version": gis.version,
            "ra": gis.properties.helperServices.rasterAnalytics.url,
            "item": (item.title, item.type, item.owner),
            "updated": updated,
        }

    try:
        seen = await asyncio.to_thread(drive_client)
        stored = await store.get_item(record.id)
    finally:
        await client.close()
        await store.close()
    assert seen["product"] == "PORTAL"  # learn.train_model refuses "AGOL"
    assert seen["me"] == "analyst" and seen["version"][0] >= 10
    assert seen["ra"] == f"{url}/arcgis/rest/services/System/RasterAnalysisTools/GPServer"
    assert seen["item"] == ("trainedModel", "Deep Learning Package", "analyst")
    assert seen["updated"] is True
    assert stored.properties["jobId"] == job_id
