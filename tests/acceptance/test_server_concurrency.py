"""Acceptance: 50 concurrent submits to the real server -> 50 jobs, no "database is locked"; a graceful
stop leaves nothing Executing."""

from __future__ import annotations

import asyncio
import sqlite3

import aiohttp
import pytest

from tests.builders.exports import write_classified_tiles
from tests.harness.server import GpjobsServer


@pytest.mark.slow
async def test_50_concurrent_submits_make_50_jobs(tmp_path):
    write_classified_tiles(tmp_path / "share" / "exports", n=2, name="seg")
    server = GpjobsServer(tmp_path, settings={"max_queued_per_user": 100}, env={"GPJOBS_FAKE_BEHAVIOUR": "ok"}).start()
    try:
        async with aiohttp.ClientSession() as session:

            async def submit(i: int) -> dict:
                form = {
                    "f": "json",
                    "in_folder": "/fileShares/default/exports/seg",
                    "model_type": "UNET",
                    "output_name": f'{{"name": "model_{i}"}}',
                    "max_epochs": "1",
                }
                async with session.post(f"{server.task_url}/submitJob", data=form) as resp:
                    assert resp.status == 200
                    return await resp.json()

            answers = await asyncio.gather(*(submit(i) for i in range(50)))
        assert all("error" not in a for a in answers), [a for a in answers if "error" in a][:3]
        ids = {a["jobId"] for a in answers}
        assert len(ids) == 50 and all(a["jobStatus"] == "esriJobSubmitted" for a in answers)
    finally:
        code = await asyncio.to_thread(server.terminate)
    assert code == 0
    log = server.log_path.read_text()
    assert "database is locked" not in log and '"level":"error"' not in log
    db = sqlite3.connect(tmp_path / "var" / "gpjobs.sqlite3")
    rows = db.execute("SELECT job_id, status FROM jobs").fetchall()
    assert {r[0] for r in rows} == ids
    # A graceful stop requeues running jobs: nothing is left Executing.
    assert not [r for r in rows if r[1] in ("esriJobExecuting", "esriJobCancelling")]
    firsts = db.execute("SELECT description FROM job_messages WHERE seq = 1").fetchall()
    assert len(firsts) == 50 and {f[0] for f in firsts} == {"Submitted."}
