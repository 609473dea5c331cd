"""Look, don't read: headless Chromium (playwright-core) watches a real training job's page. It must update itself
without reloading, draw the loss and metric charts and the progress bar while the job runs, and once it has
finished show the model card (show_results.png, model_metrics.html) served from the package; the item page shows
the card too. Screenshots: test-artifacts/clients/job-page/ (job-running.png, job-finished.png, item-page.png).
Set-up as for test_browser_e2e.py (chromium, `cd tests/clients && npm ci`)."""

from __future__ import annotations

import pytest

from tests.harness.server import REPO_ROOT, GpjobsServer

from .drivers import needs_browser, run_job_page_look
from .tiny_job import BACKBONE, EXPORT, MODEL_TYPE

ARTIFACTS = REPO_ROOT / "test-artifacts" / "clients" / "job-page"
EPOCHS = 6
pytestmark = [pytest.mark.clients, pytest.mark.slow, pytest.mark.timeout(900), *needs_browser]


async def test_the_job_page_shows_training_as_it_happens_and_the_card_at_the_end(http_server: GpjobsServer):
    job_id = http_server.submit(
        in_folder=EXPORT,
        output_name='{"name": "lookModel"}',
        model_type=MODEL_TYPE,
        backbone_model=BACKBONE,
        batch_size="2",
        max_epochs=str(EPOCHS),
        learning_rate="0.001",
        validation_percent="25",
        stop_training="false",
    )["jobId"]
    code, report, stderr = await run_job_page_look(f"{http_server.task_url}/jobs/{job_id}?f=html", ARTIFACTS)
    assert code == 0 and not report.get("error"), f"{report}\n{stderr}\n{http_server.diagnose(job_id)}"
    finished = report["finished"]
    assert finished["status"] == "esriJobSucceeded", http_server.diagnose(job_id)
    assert finished["marker"] and report["reloadsWhileWatching"] == 0  # updated in place, never reloaded
    loss, metric = finished["charts"]
    assert loss["title"] == "Loss per epoch" and loss["lines"] == [EPOCHS, EPOCHS]  # train and valid loss
    assert "train_loss" in loss["legend"] and "valid_loss" in loss["legend"]
    assert metric["lines"] == [EPOCHS] and "per epoch" in metric["title"]
    assert finished["progress"].startswith(f"Epoch {EPOCHS} of {EPOCHS}") and finished["barWidth"] == "100%"
    assert finished["cardImage"]["loaded"] and finished["cardImage"]["width"] > 100  # a real show_results.png
    assert report["cardHtml"]["status"] == 200 and report["cardHtml"]["csp"].startswith("sandbox")
    assert report["item"]["cardImage"] and "lookModel" in report["item"]["title"]
    assert "lookmodel" in (report["item"]["cardFrameText"] or "").lower()  # model_metrics.html in the frame
    running = report.get("running")  # caught only when an epoch ends while the page watches (usual)
    if running is not None:
        assert running["status"] == "esriJobExecuting" and running["charts"][0]["lines"][0] >= 2
    for name in ("job-finished.png", "item-page.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
