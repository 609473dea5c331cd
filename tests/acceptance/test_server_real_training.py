"""Acceptance: the real `gpjobs serve` with the real training child (torch) on a tiny export, end to end."""

from __future__ import annotations

import sqlite3
import zipfile
from pathlib import Path

import pytest

from tests.builders.exports import write_labeled_tiles
from tests.harness.server import TASK, GpjobsServer


@pytest.mark.slow
def test_real_child_trains_and_publishes_an_item(tmp_path):
    write_labeled_tiles(tmp_path / "share" / "exports", n=16, size=32, name="lab")
    server = GpjobsServer(tmp_path, trainer="real").start()
    try:
        job_id = server.submit(
            in_folder="/fileShares/default/exports/lab",
            model_type="FEATURE_CLASSIFIER",
            output_name='{"name": "tiny"}',
            max_epochs="1",
            batch_size="4",
            backbone_model="RESNET18",
            learning_rate="0.001",
        )["jobId"]
        info = server.wait(job_id, timeout=300)
        texts = [m["description"] for m in info["messages"]]
        assert info["jobStatus"] == "esriJobSucceeded", texts
        assert any(t.startswith("Epoch 1/1") for t in texts) and "Training Finished" in texts
        value = server.get_json(f"{TASK}/jobs/{job_id}/results/out_item")["value"]
    finally:
        server.terminate()
    row = (
        sqlite3.connect(tmp_path / "var" / "gpjobs.sqlite3")
        .execute("SELECT path, size, title FROM items WHERE id = ?", (value["id"],))
        .fetchone()
    )
    assert row[2] == "tiny" and Path(row[0]).stat().st_size == row[1]
    with zipfile.ZipFile(row[0]) as package:
        assert any(name.endswith(".emd") for name in package.namelist())
