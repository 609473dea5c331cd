"""Acceptance: `gpjobs serve` with `pool = "ray"` on a local Ray head (2 CPUs, one job per CPU): a real tiny
training runs in a Ray actor (placed ahead, its child warm) and is published, a cancel kills the actor and its
child, a Ray worker killed mid-epoch is a lost child that resumes from its checkpoint, and a job no node can
hold fails saying why."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.builders.exports import write_classified_tiles
from tests.harness.server import TASK, GpjobsServer, process_alive


def _column(server: GpjobsServer, job_id: str, column: str) -> int | None:
    row = (
        sqlite3.connect(server.data_dir / "gpjobs.sqlite3")
        .execute(f"SELECT {column} FROM jobs WHERE job_id = ?", (job_id,))
        .fetchone()
    )
    return row[0] if row else None


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _until(condition, timeout: float, what: str, server: GpjobsServer, job_id: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s\n{server.diagnose(job_id)}")


def _ray_server(tmp_path, ray_cluster, **settings) -> GpjobsServer:
    """A real `gpjobs serve` whose pool is the test's Ray head, one cpu slot, and these further settings."""
    return GpjobsServer(
        tmp_path,
        trainer="real",
        env=ray_cluster["env"],
        settings={"pool": "ray", "ray_address": ray_cluster["address"], "devices": ["cpu"], **settings},
    ).start()


def _said(server: GpjobsServer, job_id: str, fragment: str) -> bool:
    return any(fragment in m["description"] for m in server.job(job_id).get("messages", []))


@pytest.mark.slow
def test_ray_pool_trains_cancels_and_resumes_after_a_killed_worker(tmp_path, ray_cluster):
    write_classified_tiles(tmp_path / "share" / "exports", n=32, size=32, name="seg")
    server = _ray_server(tmp_path, ray_cluster, heartbeat_timeout_s=60, cancel_grace_s=5)
    fields = {
        "in_folder": "/fileShares/default/exports/seg",
        "model_type": "UNET",
        "backbone_model": "RESNET18",
        "batch_size": "4",
        "learning_rate": "0.001",
    }
    try:
        doomed = server.submit(**fields, output_name='{"name": "doomed"}', max_epochs="50")["jobId"]
        job_id = server.submit(**fields, output_name='{"name": "survivor"}', max_epochs="3")["jobId"]

        # cancel: the actor's child (on the Ray worker) goes, the job ends Cancelled
        _until(
            lambda: _said(server, doomed, "Training UNET"), 240, "the first job did not start training", server, doomed
        )
        child = _column(server, doomed, "pid")
        assert child and process_alive(child) and child != server.process.pid
        # warm_trainers (the default): the job went to an actor placed ahead, whose child had torch imported
        assert b"--warm" in Path(f"/proc/{child}/cmdline").read_bytes(), server.log_tail()
        server.post_json(f"{TASK}/jobs/{doomed}/cancel")
        assert server.wait(doomed, timeout=60)["jobStatus"] == "esriJobCancelled"
        _until(lambda: not process_alive(child), 20, "the cancelled job's child is still running", server, doomed)

        # kill -9 the Ray worker (the actor process) mid-epoch, after the first checkpoint
        _until(
            lambda: (_column(server, job_id, "checkpoint_epoch") or 0) >= 1, 240, "no first checkpoint", server, job_id
        )
        worker = _parent(_column(server, job_id, "pid"))
        os.kill(worker, signal.SIGKILL)
        info = server.wait(job_id, timeout=300)
        texts = [m["description"] for m in info["messages"]]
        assert info["jobStatus"] == "esriJobSucceeded", server.diagnose(job_id)
        assert any(t.startswith("Lost: ") for t in texts), texts
        assert any("Ray worker running the job was lost" in t or "signal 9" in t for t in texts), texts
        assert any(t.startswith("Resumed training from the checkpoint of epoch") for t in texts), "\n".join(texts)
        assert sum(t.startswith("Epoch 1/3") for t in texts) == 1  # the resumed attempt did not train it again
        assert server.get_json(f"{TASK}/jobs/{job_id}/results/out_item")["value"]["id"]
    finally:
        server.terminate()


@pytest.mark.slow
def test_a_job_no_ray_node_can_hold_fails_saying_why(tmp_path, ray_cluster):
    # Each job asks for 8 CPUs; the head has 2. Ray would keep the actor pending forever, and before, the job
    # ended as "Lost ... signal 9" after heartbeat_timeout_s; now it fails at once with the reason and a fix.
    write_classified_tiles(tmp_path / "share" / "exports", n=4, size=32, name="seg")
    server = _ray_server(tmp_path, ray_cluster, ray_cpus_per_job=8, heartbeat_timeout_s=600)
    try:
        job_id = server.submit(
            in_folder="/fileShares/default/exports/seg",
            model_type="UNET",
            backbone_model="RESNET18",
            output_name='{"name": "too_big"}',
            max_epochs="1",
        )["jobId"]
        info = server.wait(job_id, timeout=60)
        errors = [m["description"] for m in info["messages"] if m["type"] == "esriJobMessageTypeError"]
        assert info["jobStatus"] == "esriJobFailed", server.diagnose(job_id)
        assert errors[0].startswith("Ray cannot place the job: each job asks for 8 CPUs and 0 GPUs"), errors
        assert ": 2 CPUs, 0 GPUs" in errors[0] and "ray_cpus_per_job" in errors[0], errors
        assert errors[-1] == "TrainDeepLearningModel failed.", errors
        assert not any("signal 9" in m["description"] or m["description"].startswith("Lost") for m in info["messages"])
    finally:
        server.terminate()
