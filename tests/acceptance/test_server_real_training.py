"""Acceptance: the real `gpjobs serve` with the real training child (torch) on a tiny export, end to end."""

from __future__ import annotations

import sqlite3
import sys
import zipfile
from pathlib import Path

import pytest

from builders.exports import write_labeled_tiles
from gpjobs_server_proc import TASK_PATH, ServerProcess

CHILD = Path(__file__).resolve().parents[2] / "gpjobs" / "training" / "__main__.py"


@pytest.mark.slow
@pytest.mark.skipif(not CHILD.exists(), reason="the training child (gpjobs/training/__main__.py) is not built yet")
def test_real_child_trains_and_publishes_an_item(tmp_path):
    share = tmp_path / "share"
    write_labeled_tiles(share / "exports", n=16, size=32, name="lab")
    server = ServerProcess(tmp_path / "var", share, GPJOBS_TRAINER_COMMAND=f"{sys.executable} -m gpjobs.training")
    server.start()
    try:
        job_id = server.submit(in_folder="/fileShares/default/exports/lab", model_type="FEATURE_CLASSIFIER",
                               output_name='{"name": "tiny"}', max_epochs="1", batch_size="4",
                               backbone_model="RESNET18", learning_rate="0.001")["jobId"]
        info = server.wait(job_id, timeout=300)
        texts = [m["description"] for m in info["messages"]]
        assert info["jobStatus"] == "esriJobSucceeded", texts
        assert any(t.startswith("Epoch 1/1") for t in texts) and "Training Finished" in texts
        value = server.request(f"{TASK_PATH}/jobs/{job_id}/results/out_item")["value"]
    finally:
        server.terminate()
    row = sqlite3.connect(tmp_path / "var" / "gpjobs.sqlite3").execute(
        "SELECT path, size, title FROM items WHERE id = ?", (value["id"],)).fetchone()
    assert row[2] == "tiny" and Path(row[0]).stat().st_size == row[1]
    with zipfile.ZipFile(row[0]) as package:
        assert any(name.endswith(".emd") for name in package.namelist())
