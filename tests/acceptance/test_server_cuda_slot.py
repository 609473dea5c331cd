"""Acceptance on a GPU machine (marked `gpu`: skipped without a CUDA device): `gpjobs serve` with a slot on the
last GPU trains a tiny real model there; the child sees that GPU alone, as cuda:0, and uses autocast."""

from __future__ import annotations

import pytest

from gpjobs.config import resolve_devices
from tests.builders.exports import write_labeled_tiles
from tests.harness.server import GpjobsServer

pytestmark = pytest.mark.gpu


def test_auto_devices_give_every_gpu_a_slot():
    import torch

    slots = resolve_devices(["auto"])
    assert "cuda:0" in slots and "cpu" not in slots
    assert len(slots) >= torch.cuda.device_count()  # the driver may list GPUs hidden from this process


@pytest.mark.timeout(600)
def test_a_cuda_slot_trains_a_real_job_on_its_gpu(tmp_path):
    import torch

    last = f"cuda:{torch.cuda.device_count() - 1}"
    write_labeled_tiles(tmp_path / "share" / "exports", n=16, size=32, name="lab")
    server = GpjobsServer(tmp_path, trainer="real", settings={"devices": [last]}).start()
    try:
        job_id = server.submit(
            in_folder="/fileShares/default/exports/lab",
            model_type="FEATURE_CLASSIFIER",
            output_name='{"name": "on_gpu"}',
            max_epochs="2",
            batch_size="4",
            backbone_model="RESNET18",
            learning_rate="0.001",
        )["jobId"]
        info = server.wait(job_id, timeout=500)
    finally:
        server.stop()
    texts = [m["description"] for m in info["messages"]]
    assert info["jobStatus"] == "esriJobSucceeded", texts
    # CUDA_VISIBLE_DEVICES leaves the child one GPU, which it calls cuda:0 whichever slot it runs in
    assert any(" on cuda:0 with " in t and "autocast" in t for t in texts), texts
    assert any(t.startswith("Epoch 2/2") for t in texts) and "Training Finished" in texts
