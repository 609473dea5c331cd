"""Every real client against the real web layer (GP handlers + portal, `setup_web` + `setup_portal`) in-process,
with `InstantScheduler` publishing a package at once instead of training: the protocol in seconds, no torch.

The same flows with `gpjobs serve` and real training are in test_*_e2e.py. Two listeners share one store:
plain HTTP in anonymous mode (import_toolbox, the browser) and HTTPS with token auth (train_model, rest-js).
"""

from __future__ import annotations

import asyncio
import io
import ssl
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gpjobs.commands.cert import CERT_NAME, KEY_NAME, write_self_signed
from gpjobs.store import Store
from tests.harness.app import InstantScheduler, app_config, make_app, start_app
from tests.harness.server import GP_SERVICE, TASK, USERNAME

from .drivers import needs_browser, needs_rest_js, run_browser_job, run_rest_job
from .tiny_job import EXPORT, SHARE, is_item_reference, write_exports

pytestmark = [pytest.mark.clients, pytest.mark.slow, pytest.mark.timeout(300)]  # real clients drive real jobs
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "clients" / "browser-inprocess"


@dataclass
class Listener:
    base_url: str
    token: str | None
    cert: Path | None

    @property
    def task_url(self) -> str:
        return self.base_url + TASK

    def fetch(self, path: str) -> tuple[dict[str, str], bytes]:
        request = urllib.request.Request(self.base_url + path)
        if self.token:
            request.add_header("X-Esri-Authorization", f"Bearer {self.token}")
        context = ssl.create_default_context(cafile=str(self.cert)) if self.cert else None
        with urllib.request.urlopen(request, context=context, timeout=30) as resp:
            return dict(resp.headers), resp.read()


@dataclass
class Servers:
    http: Listener
    https: Listener
    store: Store


@pytest.fixture
async def servers(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    write_exports(share)
    write_self_signed(tmp_path / "tls", ["127.0.0.1"])
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "tls" / CERT_NAME, tmp_path / "tls" / KEY_NAME)
    store = await Store.open(tmp_path / "gpjobs.sqlite3")
    token = await store.create_token(USERNAME, "user")
    started: list[TestClient] = []

    async def listen(anonymous: bool, ssl_context: ssl.SSLContext | None) -> int:
        config = app_config(tmp_path, file_shares={SHARE: str(share)}, anonymous=anonymous)
        started.append(await start_app(make_app(config, store=store, scheduler=InstantScheduler), ssl=ssl_context))
        return started[-1].port

    http = await listen(True, None)
    https = await listen(False, tls)
    try:
        yield Servers(
            Listener(f"http://127.0.0.1:{http}", None, None),
            Listener(f"https://127.0.0.1:{https}", token, tmp_path / "tls" / CERT_NAME),
            store,
        )
    finally:
        for client in started:
            await client.close()  # stops its InstantScheduler; the shared store stays open
        await store.close()


def job_args() -> dict:
    return {
        "in_folder": EXPORT,
        "model_type": "FEATURE_CLASSIFIER",
        "backbone_model": "RESNET18",
        "batch_size": 4,
        "max_epochs": 1,
        "learning_rate": 0.001,
    }


async def test_arcgis_import_toolbox(servers: Servers):
    arcgis_gp = pytest.importorskip("arcgis.geoprocessing", reason="the arcgis client is not installed")

    def drive() -> object:
        tbx = arcgis_gp.import_toolbox(servers.http.base_url + GP_SERVICE)
        return tbx.train_deep_learning_model(output_name={"name": "tbx"}, **job_args())

    value = await asyncio.to_thread(drive)
    assert is_item_reference(value), value
    item = await servers.store.get_item(value["id"])
    assert item is not None and item.owner == "anonymous" and item.title == "tbx"


@pytest.mark.slow  # importing arcgis.learn (pandas, dask) takes seconds
async def test_arcgis_learn_train_model_over_https_with_a_token(servers: Servers):
    pytest.importorskip("arcgis.learn", reason="the arcgis client is not installed")
    from arcgis.gis import GIS, Item
    from arcgis.learn import train_model

    def drive():
        gis = GIS(f"{servers.https.base_url}/portal", token=servers.https.token, verify_cert=False)
        return train_model(
            input_folder=EXPORT,
            model_type="FEATURE_CLASSIFIER",
            backbone_model="RESNET18",
            batch_size=4,
            max_epochs=1,
            learning_rate=0.001,
            output_name="learned",
            gis=gis,
        )

    item = await asyncio.to_thread(drive)
    assert isinstance(item, Item) and item.type == "Deep Learning Package" and item.owner == USERNAME
    stored = await servers.store.get_item(item.id)
    assert stored.properties["jobStatus"] == "completed"  # the client's own item.update landed
    job = await servers.store.get_job(stored.properties["jobId"])
    assert job is not None and job.owner == USERNAME and job.result == {"id": item.id}
    headers, body = await asyncio.to_thread(servers.https.fetch, f"/portal/sharing/rest/content/items/{item.id}/data")
    assert 'filename="learned.dlpk"' in headers["Content-Disposition"]
    assert zipfile.ZipFile(io.BytesIO(body)).namelist() == ["learned.emd"]


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_rest_js)])
async def test_rest_js_job_with_a_token_over_verified_https(servers: Servers, _):
    params = {**job_args(), "output_name": {"name": "restjs"}, "stop_training": False}
    code, report, stderr = await run_rest_job(
        servers.https.task_url, servers.https.token, params, cert=servers.https.cert, timeout=120
    )
    assert code == 0, f"{report}\n{stderr}"
    assert report["status"] == "Succeeded"
    assert "Executing" in report["statuses"]  # it polled through the run, not just the end
    assert is_item_reference(report["out_item"]["value"])
    assert (await servers.store.get_item(report["out_item"]["value"]["id"])).owner == USERNAME


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_rest_js)])
async def test_rest_js_rejects_a_bad_submit_and_a_missing_token(servers: Servers, _):
    code, report, _ = await run_rest_job(
        servers.https.task_url,
        servers.https.token,
        {**job_args(), "in_folder": "/fileShares/nope/x", "output_name": "m"},
        cert=servers.https.cert,
        timeout=120,
    )
    assert code == 1 and "in_folder" in str(report.get("response") or report["error"]), report
    code, report, _ = await run_rest_job(
        servers.https.task_url, None, {**job_args(), "output_name": "m"}, cert=servers.https.cert, timeout=120
    )
    assert code == 1 and report.get("code") == 499, report  # rest-js reads 499 as an auth error


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser)])
async def test_browser_html_form_to_download(servers: Servers, _):
    fields = {
        "in_folder": EXPORT,
        "output_name": '{"name": "clicked"}',
        "model_type": "FEATURE_CLASSIFIER",
        "backbone_model": "RESNET18",
        "max_epochs": "1",
        "stop_training": "false",
    }
    code, report, stderr = await run_browser_job(servers.http.task_url, fields, ARTIFACTS, timeout=180)
    assert code == 0 and not report.get("error"), f"{report}\n{stderr}"
    assert report["status"] == "esriJobSucceeded" and report["download"]["name"] == "clicked.dlpk"
    assert zipfile.ZipFile(report["download"]["path"]).namelist() == ["clicked.emd"]
    assert (ARTIFACTS / "3-job-finished.png").stat().st_size > 0
