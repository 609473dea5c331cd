"""Tokens from the three places, 499/498, per-user visibility, and the admin jobs API."""

from __future__ import annotations

from gpjobs.appkeys import CONFIG_KEY
from gpjobs.domain import JobStatus
from tests.unit.web.conftest import TASK, Server

ADMIN = "/arcgis/admin/services/System/RasterAnalysisTools.GPServer/jobs"


def bearer(token: str, header: str = "X-Esri-Authorization") -> dict[str, str]:
    return {header: f"Bearer {token}"}


async def test_no_token_is_499_and_bad_token_is_498(secured: Server) -> None:
    body = await secured.submit()
    assert body["error"]["code"] == 499 and body["error"]["message"] == "Token Required"
    body = await secured.json("GET", f"{TASK}/jobs/j{'0' * 32}", params={"f": "json"})
    assert body["error"]["code"] == 499
    body = await secured.submit(headers=bearer("gpj_wrong"))
    assert body["error"]["code"] == 498
    # Service descriptions stay readable without a token (clients fetch them before signing in).
    assert "tasks" in await secured.json("GET", TASK.rsplit("/", 1)[0], params={"f": "json"})


async def test_token_accepted_from_all_three_places(secured: Server) -> None:
    token = await secured.store.create_token("alice")
    assert "jobId" in await secured.submit(output_name="esri_header", headers=bearer(token))
    assert "jobId" in await secured.submit(output_name="std_header", headers=bearer(token, "Authorization"))
    body = await secured.json(
        "POST",
        f"{TASK}/submitJob",
        data={
            "in_folder": "/fileShares/default/exports/seg",
            "output_name": "form_token",
            "model_type": "UNET",
            "f": "json",
            "token": token,
        },
    )
    assert "jobId" in body
    body = await secured.json(
        "POST",
        f"{TASK}/submitJob?token={token}",
        data={
            "in_folder": "/fileShares/default/exports/seg",
            "output_name": "query_token",
            "model_type": "UNET",
            "f": "json",
        },
    )
    jobs, total = await secured.store.list_jobs(owner="alice")
    assert total == 4 and all(j.owner == "alice" for j in jobs)


async def test_users_see_only_their_own_jobs(secured: Server) -> None:
    alice = await secured.store.create_token("alice")
    bob = await secured.store.create_token("bob")
    admin = await secured.store.create_token("root", "admin")
    job_id = (await secured.submit(headers=bearer(alice)))["jobId"]
    url = f"{TASK}/jobs/{job_id}"
    assert (await secured.json("GET", url, params={"f": "json"}, headers=bearer(alice)))["jobId"] == job_id
    # Bob gets exactly the unknown-job answer, for the job and every sub-resource, and cannot cancel it.
    unknown = await secured.json("GET", f"{TASK}/jobs/j{'1' * 32}", params={"f": "json"}, headers=bearer(bob))
    for suffix in ("", "/inputs", "/inputs/in_folder", "/results", "/cancel"):
        assert await secured.json("GET", url + suffix, params={"f": "json"}, headers=bearer(bob)) == unknown
    assert (await secured.store.get_job(job_id)).status is JobStatus.SUBMITTED
    assert (await secured.json("GET", url, params={"f": "json"}, headers=bearer(admin)))["jobId"] == job_id


async def test_admin_requires_admin(secured: Server) -> None:
    user = await secured.store.create_token("alice")
    assert (await secured.json("GET", ADMIN, params={"f": "json"}))["error"]["code"] == 499
    assert (await secured.json("GET", ADMIN, params={"f": "json"}, headers=bearer(user)))["error"]["code"] == 403


async def test_admin_query_filters_paging_sorting(secured: Server) -> None:
    alice = await secured.store.create_token("alice")
    bob = await secured.store.create_token("bob")
    admin = bearer(await secured.store.create_token("root", "admin"))
    ids = []
    for i in range(3):
        ids.append((await secured.submit(headers=bearer(alice), output_name=f"a{i}"))["jobId"])
    ids.append(
        (
            await secured.submit(
                headers=bearer(bob),
                output_name="b0",
                in_folder="/fileShares/default/exports/det",
                model_type="FASTERRCNN",
                backbone_model="RESNET18",
            )
        )["jobId"]
    )
    await secured.store.request_cancel(ids[0])

    everything = await secured.json("GET", f"{ADMIN}/query", params={"f": "json"}, headers=admin)
    assert everything["total"] == 4 and [r["jobID"] for r in everything["results"]] == ids[::-1]
    oldest = await secured.json("GET", f"{ADMIN}/query", params={"f": "json", "sort": "created_asc"}, headers=admin)
    assert [r["jobID"] for r in oldest["results"]] == ids
    page = await secured.json("GET", f"{ADMIN}/query", params={"f": "json", "number": "2", "start": "1"}, headers=admin)
    assert page["num"] == 2 and page["nextStart"] == 3
    last = await secured.json("GET", f"{ADMIN}/query", params={"f": "json", "number": "2", "start": "3"}, headers=admin)
    assert last["num"] == 2 and last["nextStart"] == -1
    by_user = await secured.json("POST", f"{ADMIN}/query", data={"f": "json", "userName": "bob"}, headers=admin)
    assert [r["jobID"] for r in by_user["results"]] == [ids[3]] and by_user["results"][0]["username"] == "bob"
    by_status = await secured.json(
        "GET", f"{ADMIN}/query", params={"f": "json", "jobStatus": "Cancelled"}, headers=admin
    )
    assert [r["jobID"] for r in by_status["results"]] == [ids[0]]
    by_type = await secured.json(
        "GET", f"{ADMIN}/query", params={"f": "json", "modelType": "fasterrcnn"}, headers=admin
    )
    assert by_type["total"] == 1
    future = await secured.json(
        "GET", f"{ADMIN}/query", params={"f": "json", "startTime": "99999999999999"}, headers=admin
    )
    assert future["total"] == 0
    bad = await secured.json("GET", f"{ADMIN}/query", params={"f": "json", "jobStatus": "Nope"}, headers=admin)
    assert "jobStatus" in bad["error"]["details"][0]


async def test_admin_detail_cancel_delete(secured: Server) -> None:
    alice = await secured.store.create_token("alice")
    admin = bearer(await secured.store.create_token("root", "admin"))
    job_id = (await secured.submit(headers=bearer(alice)))["jobId"]
    detail = await secured.json("GET", f"{ADMIN}/{job_id}", params={"f": "json"}, headers=admin)
    assert detail["jobID"] == job_id and detail["spec"]["model_type"] == "UNET"
    assert detail["messages"][0]["description"] == "Submitted."
    refused = await secured.json("POST", f"{ADMIN}/{job_id}/delete", data={"f": "json"}, headers=admin)
    assert "cancel it" in refused["error"]["message"]
    cancelled = await secured.json("POST", f"{ADMIN}/{job_id}/cancel", data={"f": "json"}, headers=admin)
    assert cancelled["status"] == "success" and cancelled["jobStatus"] == "esriJobCancelled"
    work_dir = secured.app[CONFIG_KEY].jobs / job_id
    work_dir.mkdir(parents=True)
    (work_dir / "checkpoint.pt").write_bytes(b"x")
    deleted = await secured.json("POST", f"{ADMIN}/{job_id}/delete", data={"f": "json"}, headers=admin)
    assert deleted["status"] == "success"
    assert await secured.store.get_job(job_id) is None and not work_dir.exists()
    gone = await secured.json("GET", f"{ADMIN}/{job_id}", params={"f": "json"}, headers=admin)
    assert gone["error"]["message"] == "Invalid URL"


async def test_admin_state_changes_are_post_only(secured: Server) -> None:
    admin = bearer(await secured.store.create_token("root", "admin"))
    body = await secured.json("GET", f"{ADMIN}/j{'0' * 32}/delete", params={"f": "json"}, headers=admin)
    assert body["error"]["code"] in (400, 405)
