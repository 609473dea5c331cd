"""MAXDEEPLAB: the small MaX-DeepLab on a tiny Panoptic_Segmentation export (stuff "ground", thing "tree")."""

from __future__ import annotations

import json

import pytest
import torch

from gpjobs.tasks.params import ParameterError
from gpjobs.training.events import ListReporter
from gpjobs.training.protocol import ExitCode
from tests.builders.exports import write_panoptic
from tests.training.helpers import dlpk_members, emd_of, epochs_of, make_spec, result_of, train
from tests.training.inprocess import predict_lines

torch.set_num_threads(1)

COMMON = dict(max_epochs=3, stop_training=False, learning_rate=0.002, batch_size=4)


@pytest.fixture(scope="module")
def panoptic_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("panoptic")
    folder = write_panoptic(tmp, n=16, size=64)
    spec = make_spec(tmp / "a", [folder], "MAXDEEPLAB", **COMMON)
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    return spec, folder, reporter


def test_panoptic_quality_counts():
    from gpjobs.training.models.panoptic import PanopticQuality

    truth_ids = torch.full((4, 8), -1)
    truth_ids[:, :4] = 0  # segment 0: stuff class 1 on the left half
    truth_ids[:2, 4:] = 1  # segment 1: a thing (class 2) top right; bottom right is void
    truth_classes = torch.tensor([1, 2])
    pred_class = torch.zeros(4, 8, dtype=torch.long)
    pred_class[:, :3] = 1  # 12 of the 16 stuff pixels: IoU 0.75
    pred_class[:2, 4:] = 2
    pred_instance = torch.zeros(4, 8, dtype=torch.long)
    pred_instance[:2, 4:] = 1  # exact thing
    pred_class[2:, 4:] = 2
    pred_instance[2:, 4:] = 2  # a second thing entirely on void pixels: not a false positive
    quality = PanopticQuality(["background", "ground", "tree"])
    quality.update(pred_class, pred_instance, truth_ids, truth_classes)
    result = quality.result()
    assert result["per_class_metrics"]["ground"] == {"pq": 0.75, "sq": 0.75, "rq": 1.0}
    assert result["per_class_metrics"]["tree"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    assert result["PQ"] == pytest.approx(0.875)
    quality.update(
        torch.zeros(4, 8, dtype=torch.long), torch.zeros(4, 8, dtype=torch.long), truth_ids, truth_classes
    )  # a chip with both segments missed: two false negatives
    assert quality.result()["RQ"] == pytest.approx((1 / 1.5 + 1 / 1.5) / 2)


def test_loss_falls_on_one_batch_and_segments_are_right():
    """The Hungarian PQ loss, mask-ID, instance and semantic terms train the network on a fixed batch."""
    from gpjobs.training.models.maxdeeplab_net import MaXDeepLabNet
    from gpjobs.training.models.panoptic import panoptic_loss, segments

    torch.manual_seed(0)
    semantic = torch.zeros(32, 32, dtype=torch.long)
    semantic[:, :10] = 1
    semantic[20:, 20:] = 2
    masks = torch.zeros(1, 32, 32, dtype=torch.uint8)
    masks[0, 20:, 20:] = 1
    target = {"semantic": semantic, "masks": masks, "labels": torch.tensor([2])}
    net = MaXDeepLabNet(3, (32, 32), 3, 5, [2])
    ids, classes = segments(target, net.is_thing)
    assert classes.tolist() == [2, 0, 1] and int((ids == 0).sum()) == 144 and int((ids == -1).sum()) == 0
    images = torch.randn(2, 3, 32, 32)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss, parts = panoptic_loss(net.outputs(images), [target, target], net.is_thing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0] and set(parts) == {"pq", "instance", "mask_id", "semantic"}


@pytest.mark.slow  # trains a panoptic model (panoptic_run)
def test_maxdeeplab_learns_and_packages(panoptic_run):
    _, _, reporter = panoptic_run
    epochs = epochs_of(reporter)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    result = result_of(reporter)
    metrics = result["metrics"]
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("PQ", "SQ", "RQ"))
    assert {
        "model.emd",
        "model.pth",
        "model.pt",
        "GpjobsPanopticSegmenter.py",
        "gpjobs_prf_core.py",
        "model_metrics.html",
        "ModelCharacteristics/loss_graph.png",
        "ModelCharacteristics/show_results.png",
    } <= dlpk_members(result["package"])
    emd = emd_of(result)
    assert emd["ModelName"] == "MaXDeepLab" and emd["ModelType"] == "PanopticSegmenter"
    assert emd["ModelConfiguration"] == "_panoptic_inferencing" and emd["DatasetType"] == "Panoptic_Segmentation"
    assert emd["InferenceFunction"] == "GpjobsPanopticSegmenter.py"
    assert emd["GpjobsInference"] == {
        "interface": 1,
        "output": "panoptic",
        "index_values": [0, 1, 2],
        "score_thresh": 0.5,
    }
    assert emd["Kwargs"] == {"n_masks": 5, "instance_classes": [2]}  # 3 segments at most + 2 spare slots
    assert float(emd["panoptic_quality"]) == pytest.approx(metrics["PQ"], abs=1e-4)
    assert set(json.loads(emd["per_class_metrics"])) <= {"ground", "tree"}


@pytest.mark.slow  # trains a panoptic model (panoptic_run)
def test_predict_reproduces_validation_pq(panoptic_run, capsys, tmp_path):
    import tifffile

    from gpjobs.training.data import open_training_data
    from gpjobs.training.models.panoptic import PanopticQuality, segments

    spec, folder, reporter = panoptic_run
    result = result_of(reporter)
    data = open_training_data(
        [folder], task="panoptic", validation_percent=spec.request.validation_percent, seed=42, augment=False
    )
    chips = [r.image for r in data.valid.records]
    lines = predict_lines(capsys, result["package"], chips, masks_dir=str(tmp_path))
    assert len(lines) == len(chips) and all("class_pixels" in line and "instances" in line for line in lines)
    quality = PanopticQuality(["background", "ground", "tree"])
    is_thing = torch.tensor([False, False, True])
    index = {0: 0, 1: 1, 2: 2}  # class value -> model index (the builder's values are already 1, 2)
    for i, chip in enumerate(chips):
        values = torch.from_numpy(tifffile.imread(tmp_path / f"{chip.stem}.tif")).long()
        classes = values.apply_(lambda v: index[v])
        instances = torch.from_numpy(tifffile.imread(tmp_path / f"{chip.stem}_instances.tif")).long()
        ids, seg_classes = segments(data.valid[i][1], is_thing)
        quality.update(classes, instances, ids, seg_classes)
    assert quality.result()["PQ"] == pytest.approx(result["metrics"]["PQ"], abs=1e-9)


@pytest.mark.slow  # trains a panoptic model (panoptic_run)
def test_resume_after_interrupt_gives_the_same_numbers(panoptic_run, tmp_path):
    spec, folder, straight = panoptic_run

    class StopAfterEpoch1(ListReporter):
        def emit(self, event_type, **fields):
            super().emit(event_type, **fields)
            if event_type == "epoch" and fields["epoch"] == 1:
                self.request_cancel()

    spec = make_spec(tmp_path, [folder], "MAXDEEPLAB", **COMMON)
    code, _ = train(spec, StopAfterEpoch1())
    assert code == ExitCode.CANCELLED and spec.checkpoint_path.is_file()
    code, resumed = train(spec)
    assert code == ExitCode.OK
    assert [e["valid_loss"] for e in epochs_of(resumed)] == [e["valid_loss"] for e in epochs_of(straight)][1:]
    assert result_of(resumed)["metrics"] == result_of(straight)["metrics"]


@pytest.mark.slow  # trains an epoch
def test_chip_size_and_bad_data_get_fix_it_errors(tmp_path):
    folder = write_panoptic(tmp_path, n=8, size=40)
    with pytest.raises(ParameterError, match="multiple of 16; 40 px is not"):  # refused before training
        make_spec(tmp_path, [folder], "MAXDEEPLAB", **COMMON)
    code, reporter = train(
        make_spec(tmp_path / "b", [folder], "MAXDEEPLAB", **{**COMMON, "max_epochs": 1}, arguments={"chip_size": 32})
    )
    assert code == ExitCode.OK  # chip_size resizes the 40 px chips to a multiple of 16
    bad = sorted((folder / "labels2" / "tree").iterdir())[0]
    bad.write_bytes(b"not a raster")
    code, reporter = train(make_spec(tmp_path / "c", [folder], "MAXDEEPLAB", **COMMON, arguments={"chip_size": 32}))
    failed = [e for e in reporter.events if e["type"] == "failed"][0]
    assert code == ExitCode.BAD_INPUT and any(f"labels2/tree/{bad.name}" in d for d in failed["details"])


@pytest.mark.heavy
def test_maxdeeplab_learns_panoptic_segments(tmp_path):
    folder = write_panoptic(tmp_path, n=32, size=64)
    code, reporter = train(make_spec(tmp_path, [folder], "MAXDEEPLAB", **{**COMMON, "max_epochs": 12}))
    assert code == ExitCode.OK
    assert result_of(reporter)["metrics"]["PQ"] > 0.5, epochs_of(reporter)
