"""/metrics: Prometheus text from the whole app (create_app, fake trainer): admin-only with real HTTP status
codes unless metrics_public, and the counts move with what the server did."""

from __future__ import annotations

import asyncio
import json

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gpjobs.app import create_app
from gpjobs.appkeys import SCHEDULER_KEY, STORE_KEY
from gpjobs.domain import Job, JobStatus, new_job_id
from tests.fakes.fake_jobs import fake_request

TASK = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/TrainDeepLearningModel"
JOB_ROUTE = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/{task}/jobs/{job_id}"  # one label, every task


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def start(config) -> TestClient:
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    return client


async def test_metrics_need_an_admin_token_and_answer_with_real_status_codes(make_config):
    client = await start(make_config(anonymous=False))
    try:
        store = client.app[STORE_KEY]
        user, admin = await store.create_token("ana", "user"), await store.create_token("root", "admin")
        assert (await client.get("/metrics")).status == 401
        assert (await client.get("/metrics", headers={"Authorization": f"Bearer {user}"})).status == 403
        resp = await client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert resp.status == 200 and resp.content_type == "text/plain"
        assert "gpjobs_queue_depth 0.0" in await resp.text()
    finally:
        await client.close()


async def test_metrics_follow_a_job_from_queue_to_finish(make_config):
    client = await start(make_config(metrics_public=True))
    try:
        store = client.app[STORE_KEY]
        request = fake_request(max_epochs=3)
        job = await store.create_job(
            Job(
                job_id=new_job_id(),
                owner="anonymous",
                status=JobStatus.SUBMITTED,
                model_type="FEATURE_CLASSIFIER",
                inputs={"output_name": json.dumps({"name": "m"})},
                spec=request.to_json_dict(),
            )
        )
        client.app[SCHEDULER_KEY].submitted()
        for _ in range(400):
            resp = await client.get(f"{TASK}/jobs/{job.job_id}", params={"f": "json"})
            if (await resp.json())["jobStatus"] == "esriJobSucceeded":
                break
            await asyncio.sleep(0.05)
        await client.get("/no/such/page")
        # The job reads as succeeded once its status is committed; the scheduler ends the attempt (and counts
        # it) just after. Under load that gap is longer than one scrape: wait for it, then check everything.
        for _ in range(100):
            found = samples(await (await client.get("/metrics")).text())
            if value(
                found, "gpjobs_job_run_seconds_count", model_type="FEATURE_CLASSIFIER", outcome="esriJobSucceeded"
            ):
                break
            await asyncio.sleep(0.05)
    finally:
        await client.close()
    assert value(found, "gpjobs_jobs", status="esriJobSucceeded", model_type="FEATURE_CLASSIFIER") == 1
    assert value(found, "gpjobs_jobs_finished_total", status="esriJobSucceeded", model_type="FEATURE_CLASSIFIER") == 1
    assert value(found, "gpjobs_epochs_total", model_type="FEATURE_CLASSIFIER") == 3
    assert value(found, "gpjobs_children_started_total", device="cpu", kind="warm") == 1
    assert value(found, "gpjobs_job_wait_seconds_count", model_type="FEATURE_CLASSIFIER") == 1
    assert (
        value(found, "gpjobs_job_run_seconds_count", model_type="FEATURE_CLASSIFIER", outcome="esriJobSucceeded") == 1
    )
    assert value(found, "gpjobs_slot_busy_seconds_total", device="cpu") > 0
    assert value(found, "gpjobs_slot_busy", device="cpu") == 0 and value(found, "gpjobs_queue_depth") == 0
    assert value(found, "gpjobs_sqlite_write_seconds_count") >= 5  # claim, progress, publish, ...
    polls = value(found, "gpjobs_http_requests_total", route=JOB_ROUTE, method="GET", status="200")
    assert polls >= 1
    assert value(found, "gpjobs_http_request_seconds_count", route=JOB_ROUTE, method="GET") == polls
    assert value(found, "gpjobs_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(found, "process_cpu_seconds_total") > 0


async def test_request_labels_stay_bounded_whatever_clients_send(make_config):
    client = await start(make_config(metrics_public=True))
    try:
        for i, method in enumerate(("PROPFIND", "MKCOL", "LOCK", "UNLOCK", "SEARCH", "PURGE", "REPORT")):
            await client.request(method, f"/nowhere/{i}")  # methods the HTTP parser knows but nothing here serves
            await client.get(f"{TASK}/jobs/j{i:032x}", params={"f": "json"})
        found = samples(await (await client.get("/metrics")).text())
    finally:
        await client.close()
    routes = {dict(labels).get("route") for name, labels in found if name == "gpjobs_http_requests_total"}
    methods = {dict(labels).get("method") for name, labels in found if name == "gpjobs_http_requests_total"}
    assert routes == {"unmatched", JOB_ROUTE} and methods == {"other", "GET"}
