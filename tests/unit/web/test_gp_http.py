"""Every GP endpoint through an aiohttp test client over a real SQLite store (scheduler faked)."""

from __future__ import annotations

import re

import aiohttp

from gpjobs.domain import Item, new_item_id
from tests.unit.web.conftest import TASK, Server

SERVICE = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer"
JOB_ID = re.compile(r"^j[0-9a-f]{32}$")


async def run_to_success(server: Server, job_id: str, *, title: str = "m1", owner: str = "anonymous") -> Item:
    """Drive a submitted job as the scheduler would: claim, then publish an item."""
    claimed = await server.store.claim_next_job("cpu", "boot-1")
    assert claimed is not None and claimed.job_id == job_id
    package = server.share / f"{title}.dlpk"
    package.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    item = Item(
        id=new_item_id(),
        owner=owner,
        title=title,
        name=f"{title}.dlpk",
        path=str(package),
        job_id=job_id,
        size=package.stat().st_size,
    )
    _job, item, _ = await server.store.publish_job(job_id, result={"id": item.id}, item=item)
    return item


async def test_service_json_has_what_clients_read(server: Server) -> None:
    for method in ("GET", "POST"):
        body = await server.json(method, SERVICE, params={"f": "json"})
        assert body["tasks"] == [
            "TrainDeepLearningModel",
            "ClassifyPixelsUsingDeepLearning",
            "DetectObjectsUsingDeepLearning",
            "ClassifyObjectsUsingDeepLearning",
            "DetectChangeUsingDeepLearning",
        ]
        assert body["executionType"] == "esriExecutionTypeAsynchronous"
        assert body["resultMapServerName"] == "" and body["currentVersion"] < 12


async def test_every_listed_task_answers_with_its_resource(server: Server) -> None:
    """arcgis' import_toolbox fetches every task the service lists: each must be a complete task resource,
    with the defaults Python literals (the client writes them into generated source)."""
    service = await server.json("GET", SERVICE, params={"f": "json"})
    for name in service["tasks"]:
        body = await server.json("POST", f"{SERVICE}/{name}", data={"f": "json"})
        assert body["name"] == name and body["executionType"] == "esriExecutionTypeAsynchronous"
        outputs = [p for p in body["parameters"] if p["direction"] == "esriGPParameterDirectionOutput"]
        assert len(outputs) == 1 and outputs[0]["dataType"] == "GPString"
        for p in body["parameters"]:
            assert {"name", "dataType", "displayName", "direction", "defaultValue", "parameterType"} <= set(p)
            if p["dataType"] != "GPString" and p["defaultValue"] is not None:
                compile(str(p["defaultValue"]), "<default>", "eval")
    missing = await server.json("GET", f"{SERVICE}/NoSuchTask", params={"f": "json"})
    assert "error" in missing


async def test_task_json_declares_all_inputs_and_output(server: Server) -> None:
    body = await server.json("POST", TASK, data={"f": "json"})
    assert body["name"] == "TrainDeepLearningModel"
    names = [p["name"] for p in body["parameters"]]
    assert names[:3] == ["in_folder", "output_name", "model_type"] and "freeze_model" in names
    assert len(names) == 15 and names[-1] == "out_item"
    for p in body["parameters"]:
        assert {"name", "dataType", "displayName", "direction", "defaultValue", "parameterType"} <= set(p)
    # Non-string defaults become Python source in the arcgis client: they must be Python literals.
    for p in body["parameters"]:
        if p["dataType"] != "GPString" and p["defaultValue"] is not None:
            compile(str(p["defaultValue"]), "<default>", "eval")


async def test_directory_and_info(server: Server) -> None:
    assert (await server.json("GET", "/arcgis/rest/services", params={"f": "json"}))["folders"] == ["System"]
    folder = await server.json("GET", "/arcgis/rest/services/System", params={"f": "json"})
    assert folder["services"] == [{"name": "System/RasterAnalysisTools", "type": "GPServer"}]
    info = await server.json("GET", "/arcgis/rest/info", params={"f": "json"})
    assert info["authInfo"]["isTokenBasedSecurity"] is False


async def test_pjson_is_pretty(server: Server) -> None:
    resp = await server.client.get(SERVICE, params={"f": "pjson"})
    assert "\n  " in await resp.text()


async def test_submit_then_poll_then_results(server: Server) -> None:
    sub = await server.submit(batch_size="4", overwriteModel="False", **{"env:outSR": "3857"})
    assert JOB_ID.match(sub["jobId"]) and sub["jobStatus"] == "esriJobSubmitted"
    assert server.scheduler.wakeups == 1
    job_url = f"{TASK}/jobs/{sub['jobId']}"
    body = await server.json("GET", job_url, params={"f": "json"})
    assert body["jobStatus"] == "esriJobSubmitted"
    assert body["messages"] == [{"type": "esriJobMessageTypeInformative", "description": "Submitted."}]
    assert "results" not in body and "progress" not in body
    no_msgs = await server.json("POST", job_url, data={"f": "json", "returnMessages": "False"})
    assert "messages" not in no_msgs and no_msgs["jobId"] == sub["jobId"]

    stored = await server.store.get_job(sub["jobId"])
    assert stored.spec["batch_size"] == 4 and stored.inputs["batch_size"] == "4"
    assert "env:outSR" not in stored.inputs

    await server.store.claim_next_job("cpu", "boot-1")
    await server.store.record_progress(
        sub["jobId"], progress=42.4, messages=[("esriJobMessageTypeInformative", "Epoch 1/2")]
    )
    running = await server.json("GET", job_url, params={"f": "json"})
    assert running["jobStatus"] == "esriJobExecuting"
    assert running["progress"] == {"type": "default", "message": "Epoch 1/2", "percentage": 42}
    assert "results" not in running

    # Results are not there before success.
    early = await server.json("GET", f"{job_url}/results/out_item", params={"f": "json"})
    assert early["error"]["code"] == 400

    claimed_item = Item(id=new_item_id(), owner="anonymous", title="m1", name="m1.dlpk", path="/x", job_id=sub["jobId"])
    await server.store.publish_job(sub["jobId"], result={"id": claimed_item.id}, item=claimed_item)
    done = await server.json("GET", job_url, params={"f": "json"})
    assert done["jobStatus"] == "esriJobSucceeded" and "progress" not in done
    assert done["results"] == {"out_item": {"paramUrl": "results/out_item"}}
    assert done["inputs"]["in_folder"] == {"paramUrl": "inputs/in_folder"}
    result = await server.json("GET", f"{job_url}/{done['results']['out_item']['paramUrl']}", params={"f": "json"})
    assert result == {
        "paramName": "out_item",
        "dataType": "GPString",
        "value": {"itemId": claimed_item.id, "id": claimed_item.id},
    }
    listed = await server.json("GET", f"{job_url}/results", params={"f": "json"})
    assert listed == [result]
    inp = await server.json("GET", f"{job_url}/inputs/in_folder", params={"f": "json"})
    assert inp == {"paramName": "in_folder", "dataType": "GPString", "value": "/fileShares/default/exports/seg"}
    inputs = await server.json("GET", f"{job_url}/inputs", params={"f": "json"})
    assert len(inputs) == 14 and inputs[4] == {"paramName": "batch_size", "dataType": "GPLong", "value": "4"}


async def test_file_share_result_is_a_uri(server: Server) -> None:
    sub = await server.submit(output_name='{"uri": "/fileShares/default/models_out"}')
    await server.store.claim_next_job("cpu", "b")
    await server.store.publish_job(sub["jobId"], result={"uri": "/fileShares/default/models_out/models_out.dlpk"})
    result = await server.json("GET", f"{TASK}/jobs/{sub['jobId']}/results/out_item", params={"f": "json"})
    assert result["value"] == {"uri": "/fileShares/default/models_out/models_out.dlpk"}


async def test_submit_errors_name_the_parameter(server: Server) -> None:
    body = await server.submit(model_type="UNET", batch_size="0", in_folder="/fileShares/default/../../etc")
    assert body["error"]["code"] == 400
    assert body["error"]["message"] == "Invalid or missing input parameters."
    details = " ".join(body["error"]["details"])
    assert "batch_size" in details and "in_folder" in details
    assert (await server.store.list_jobs())[1] == 0


async def test_multipart_submit(server: Server) -> None:
    form = aiohttp.FormData()
    for key, value in {
        "in_folder": "/fileShares/default/exports/det",
        "output_name": "det1",
        "model_type": "SSD",
        "backbone_model": "RESNET18",
        "f": "json",
    }.items():
        form.add_field(key, value)
    form.add_field("unused_file", b"abc", filename="x.bin")  # forces multipart/form-data
    body = await server.json("POST", f"{TASK}/submitJob", data=form)
    assert JOB_ID.match(body["jobId"]), body


async def test_query_and_form_are_merged_form_wins(server: Server) -> None:
    body = await server.json(
        "POST",
        f"{TASK}/submitJob",
        params={"model_type": "NOPE", "f": "json"},
        data={"model_type": "UNET", "in_folder": "/fileShares/default/exports/seg", "output_name": "x"},
    )
    assert "jobId" in body, body


async def test_name_clash_needs_overwrite(server: Server) -> None:
    sub = await server.submit()
    await run_to_success(server, sub["jobId"])
    clash = await server.submit()
    assert "overwrite_model" in " ".join(clash["error"]["details"])
    again = await server.submit(overwrite_model="true")
    assert "jobId" in again


async def test_pretrained_item_must_be_readable(server: Server) -> None:
    sub = await server.submit()
    item = await run_to_success(server, sub["jobId"])
    ok = await server.submit(output_name="m2", pretrained_model=f'{{"itemId": "{item.id}"}}')
    stored = await server.store.get_job(ok["jobId"])
    assert stored.spec["pretrained"]["path"] == item.path
    missing = await server.submit(output_name="m3", pretrained_model='{"itemId": "' + "a" * 32 + '"}')
    assert "does not exist or is not accessible" in " ".join(missing["error"]["details"])


async def test_unknown_job_is_invalid_url(server: Server) -> None:
    for job_id in ("j" + "0" * 32, "not-a-job", "j../../x"):
        body = await server.json("GET", f"{TASK}/jobs/{job_id}", params={"f": "json"})
        assert body == {"error": {"code": 400, "message": "Invalid URL", "details": ["Invalid URL"]}}
    body = await server.json("GET", f"{SERVICE}/NoSuchTask", params={"f": "json"})
    assert body["error"]["message"] == "Invalid URL"


async def test_cancel_queued_running_and_finished(server: Server) -> None:
    first = await server.submit(output_name="a")
    second = await server.submit(output_name="b")
    await server.store.claim_next_job("cpu", "boot")  # first is executing now
    running = await server.json("GET", f"{TASK}/jobs/{first['jobId']}/cancel", params={"f": "json"})
    assert running == {"jobId": first["jobId"], "jobStatus": "esriJobCancelling"}
    queued = await server.json("POST", f"{TASK}/jobs/{second['jobId']}/cancel", data={"f": "json"})
    assert queued == {"jobId": second["jobId"], "jobStatus": "esriJobCancelled"}
    again = await server.json("POST", f"{TASK}/jobs/{second['jobId']}/cancel", data={"f": "json"})
    assert again["jobStatus"] == "esriJobCancelled"
    body = await server.json("GET", f"{TASK}/jobs/{second['jobId']}", params={"f": "json"})
    assert body["messages"][-1]["description"] == "Cancel complete."


async def test_health_and_unknown_paths(server: Server) -> None:
    resp = await server.client.get("/health")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await server.client.get("/nowhere")
    assert resp.status == 404


async def test_request_size_is_capped(tmp_path) -> None:
    from tests.unit.web.conftest import start_server

    srv = await start_server(tmp_path, max_request_bytes=2048)
    try:
        body = await srv.json("POST", f"{TASK}/submitJob", data={"f": "json", "arguments": "x" * 5000})
        assert body["error"]["code"] == 413
    finally:
        await srv.client.close()


async def test_execute_points_to_submit_job(server: Server) -> None:
    body = await server.json("POST", f"{TASK}/execute", data={"f": "json"})
    assert "submitJob" in body["error"]["message"]


async def test_gpu_request_on_a_cpu_server_is_refused_at_submit(server: Server) -> None:
    sub = await server.submit(context='{"processorType": "GPU"}')
    assert "jobId" not in sub and "no GPU slot" in " ".join(sub["error"]["details"])
    assert "jobId" in await server.submit(context='{"processorType": "CPU"}')


async def test_internal_errors_reach_no_client(server: Server, monkeypatch) -> None:
    async def broken(job_id: str):
        raise RuntimeError("secret internals at /srv/db")

    monkeypatch.setattr(server.store, "get_job", broken)
    resp = await server.client.get(f"{TASK}/jobs/j{'0' * 32}", params={"f": "json"})
    text = await resp.text()
    assert resp.status == 200 and "secret" not in text and "Traceback" not in text
    body = await resp.json()
    assert body["error"]["code"] == 500 and "request id" in body["error"]["details"][0]
    assert resp.headers["X-Request-Id"] in body["error"]["details"][0]
