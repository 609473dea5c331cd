"""Acceptance: the real `gpjobs serve` with the real training child trains a detector end to end, with the
LR finder (no learning_rate) and early stopping on a detector metric, and publishes a detector package."""

from __future__ import annotations

import json
import sqlite3
import zipfile

import pytest

from tests.builders.exports import write_pascal_voc
from tests.harness.server import TASK, GpjobsServer


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_child_trains_a_detector_and_publishes_it(tmp_path):
    write_pascal_voc(tmp_path / "share" / "exports", n=12, size=32, name="voc")
    server = GpjobsServer(tmp_path, trainer="real").start()
    try:
        # AP cannot rise by 2.0, so patience 1 stops after epoch 2 of 100; 100 epochs of 2 steps
        # leave the LR range test its 20 steps (10 % of the planned steps)
        arguments = {"monitor": "average_precision", "patience": "1", "min_delta": "2", "zooms": "[1.0, 0.7]"}
        job_id = server.submit(
            in_folder="/fileShares/default/exports/voc",
            model_type="SSD",
            output_name='{"name": "tiny_ssd"}',
            max_epochs="100",
            batch_size="4",
            backbone_model="RESNET18",
            freeze_model="false",
            learning_rate="",
            arguments=json.dumps(arguments),
        )["jobId"]
        info = server.wait(job_id, timeout=500)
        texts = [m["description"] for m in info["messages"]]
        assert info["jobStatus"] == "esriJobSucceeded", texts
        assert any(t.startswith("LR finder:") for t in texts), texts
        assert any(t.startswith("Epoch 2/100") for t in texts) and not any(t.startswith("Epoch 3/100") for t in texts)
        assert any(t.startswith("Early stopping: average_precision") for t in texts), texts
        value = server.get_json(f"{TASK}/jobs/{job_id}/results/out_item")["value"]
    finally:
        server.terminate()
    path, title = (
        sqlite3.connect(tmp_path / "var" / "gpjobs.sqlite3")
        .execute("SELECT path, title FROM items WHERE id = ?", (value["id"],))
        .fetchone()
    )
    assert title == "tiny_ssd"
    with zipfile.ZipFile(path) as package:
        names = package.namelist()
        emd = json.loads(package.read(next(n for n in names if n.endswith(".emd"))))
        log = json.loads(package.read(next(n for n in names if n.endswith("training_log.json"))))
    assert "ModelCharacteristics/show_results.png" in names and "ModelCharacteristics/lr_finder.png" in names
    assert emd["ModelType"] == "ObjectDetection" and emd["ModelName"] == "SingleShotDetector"
    assert emd["Zooms"] == [1.0, 0.7] and set(emd["average_precision_score"]) == {"a", "b"}
    # the best epoch is the one of the highest AP (by any margin; the first of equals)
    aps = [epoch["average_precision"] for epoch in log["history"]]
    assert emd["Gpjobs"]["stopped_early"] is True and emd["Gpjobs"]["best_epoch"] == aps.index(max(aps)) + 1
    assert emd["Gpjobs"]["lr_finder"]["points"] >= 10
