"""The html pages a person uses: task form, submit redirect, self-refreshing job page, download link."""

from __future__ import annotations

from tests.unit.web.conftest import TASK, Server
from tests.unit.web.test_gp_http import run_to_success

BROWSER = {"Accept": "text/html,application/xhtml+xml"}


async def html(server: Server, path: str, **kw) -> str:
    resp = await server.client.get(path, **kw)
    assert resp.status == 200 and resp.content_type == "text/html", await resp.text()
    return await resp.text()


async def test_task_page_has_a_submit_form(server: Server) -> None:
    page = await html(server, TASK, params={"f": "html"})
    assert f'action="{TASK}/submitJob"' in page
    for name in ("in_folder", "output_name", "model_type", "freeze_model", "overwrite_model"):
        assert f'name="{name}"' in page
    assert '<option value="UNET">' in page


async def test_browser_without_f_gets_html_scripts_get_json(server: Server) -> None:
    assert "<html" in await html(server, TASK, headers=BROWSER)
    resp = await server.client.get(TASK)
    assert resp.content_type == "application/json"


async def test_html_submit_redirects_to_a_refreshing_job_page(server: Server) -> None:
    resp = await server.client.post(
        f"{TASK}/submitJob",
        allow_redirects=False,
        data={
            "f": "html",
            "in_folder": "/fileShares/default/exports/seg",
            "output_name": "m1",
            "model_type": "UNET",
            "batch_size": "2",
            "learning_rate": "",
            "stop_training": "true",
        },
    )
    assert resp.status == 303
    location = resp.headers["Location"]
    assert location.startswith(f"{TASK}/jobs/j") and location.endswith("?f=html")
    page = await html(server, location)
    assert 'http-equiv="refresh"' in page and "esriJobSubmitted" in page and "Submitted." in page
    assert "Cancel job" in page

    job_id = location.split("/jobs/")[1].split("?")[0]
    await server.store.claim_next_job("cpu", "b")
    await server.store.record_progress(job_id, progress=37.0)
    page = await html(server, location)
    assert 'role="progressbar"' in page and 'aria-valuenow="37' in page and "width: 37.0%" in page


async def test_succeeded_job_page_links_the_package_and_stops_refreshing(server: Server) -> None:
    resp = await server.client.post(
        f"{TASK}/submitJob",
        data={"f": "json", "in_folder": "/fileShares/default/exports/seg", "output_name": "m1", "model_type": "UNET"},
    )
    job_id = (await resp.json())["jobId"]
    item = await run_to_success(server, job_id)
    page = await html(server, f"{TASK}/jobs/{job_id}", params={"f": "html"})
    assert f"/sharing/rest/content/items/{item.id}/data" in page
    assert 'http-equiv="refresh"' not in page and "esriJobSucceeded" in page


async def test_html_escapes_user_text(server: Server) -> None:
    resp = await server.client.post(
        f"{TASK}/submitJob",
        data={
            "f": "json",
            "in_folder": "/fileShares/default/exports/seg",
            "output_name": "m1",
            "model_type": "UNET",
            "arguments": '{"monitor": "<script>x</script>"}',
        },
    )
    job_id = (await resp.json())["jobId"]
    page = await html(server, f"{TASK}/jobs/{job_id}/inputs", params={"f": "html"})
    assert "<script>x" not in page and "&lt;script&gt;" in page


async def test_html_error_page(server: Server) -> None:
    resp = await server.client.get(f"{TASK}/jobs/j{'0' * 32}", params={"f": "html"})
    assert resp.status == 400 and "Invalid URL" in await resp.text()


async def test_service_and_directory_pages(server: Server) -> None:
    assert "TrainDeepLearningModel" in await html(server, TASK.rsplit("/", 1)[0], params={"f": "html"})
    assert "System" in await html(server, "/arcgis/rest/services", params={"f": "html"})


async def test_task_page_lists_only_the_callers_recent_jobs(secured: Server) -> None:
    alice = await secured.store.create_token("alice")
    bob = await secured.store.create_token("bob")
    mine = (await secured.submit(headers={"Authorization": f"Bearer {alice}"}))["jobId"]
    theirs = (await secured.submit(headers={"Authorization": f"Bearer {bob}"}))["jobId"]
    page = await html(secured, TASK, params={"f": "html", "token": alice})
    assert mine in page and theirs not in page
    assert f'name="token" value="{alice}"' in page  # the form carries the token on
    assert "Recent jobs" not in await html(secured, TASK, params={"f": "html"})
