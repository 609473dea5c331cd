"""Acceptance: kill -9 the real server mid-job and restart it -> the job resumes and completes once."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from gpjobs import messages
from gpjobs.domain import SERVER_CRASH_LIMIT
from tests.builders.exports import write_classified_tiles
from tests.harness.server import TASK, GpjobsServer, process_alive, processes_mentioning


@pytest.mark.slow
def test_kill_9_mid_job_then_restart_completes_once_with_one_item(tmp_path):
    write_classified_tiles(tmp_path / "share" / "exports", n=2, name="seg")
    server = GpjobsServer(tmp_path, env={"GPJOBS_FAKE_BEHAVIOUR": "slow", "GPJOBS_FAKE_EPOCH_S": "0.5"}).start()
    try:
        answer = server.submit(
            in_folder="/fileShares/default/exports/seg",
            output_name='{"name": "survivor"}',
            model_type="UNET",
            max_epochs="6",
        )
        job_id = answer["jobId"]
        assert answer["jobStatus"] == "esriJobSubmitted"
        work = tmp_path / "var" / "jobs" / job_id
        deadline = time.monotonic() + 60
        while not (work / "checkpoint.json").exists():  # at least one epoch checkpointed
            assert time.monotonic() < deadline, server.log_path.read_text()[-2000:]
            time.sleep(0.05)
        child_pid = json.loads((work / "fake_runs.jsonl").read_text().splitlines()[0])["pid"]
        server.kill()
        # The child notices its lifeline closing and exits on its own.
        deadline = time.monotonic() + 10
        while process_alive(child_pid):
            assert time.monotonic() < deadline, "training child survived the server's kill -9"
            time.sleep(0.05)

        server.start()  # over the same data dir
        info = server.wait(job_id, timeout=90)
        assert info["jobStatus"] == "esriJobSucceeded", info
        result = server.get_json(f"{TASK}/jobs/{job_id}/results/out_item")
        assert result["value"]["id"] and "url" not in result["value"]
        said = [m["description"] for m in info["messages"]]
        assert messages.interrupted_by_crash(1, SERVER_CRASH_LIMIT) in said, said
        assert said.count(messages.TRAINING_FINISHED) == 1
        runs = [json.loads(line) for line in (work / "fake_runs.jsonl").read_text().splitlines()]
        assert len(runs) == 2 and runs[1]["resumed_from_epoch"] >= 1
        # The resume line names the checkpoint the child loaded, whatever the store had acknowledged.
        assert messages.resumed_from(runs[1]["resumed_from_epoch"]) in said, said
    finally:
        code = server.terminate() if server.running else 0
    assert code == 0
    db = sqlite3.connect(tmp_path / "var" / "gpjobs.sqlite3")
    assert db.execute("SELECT count(*) FROM items WHERE job_id = ?", (job_id,)).fetchone()[0] == 1
    # The crash was the server's, not the job's: it gave its attempt back (issue 11) and counts as a crash.
    assert db.execute("SELECT status, attempts, server_crashes FROM jobs WHERE job_id = ?", (job_id,)).fetchone() == (
        "esriJobSucceeded",
        1,
        1,
    )
    packages = list((tmp_path / "var" / "content").rglob("*.dlpk"))
    assert [p.name for p in packages] == ["survivor.dlpk"]
    assert processes_mentioning(job_id) == []  # no stray training process left behind
