"""CHANGEDETECTOR: Siamese ResNet + attention + contrastive loss on tiny ChangeDetection exports."""

from __future__ import annotations

import pytest
import torch

from tests.builders.exports import write_change_detection
from tests.training.helpers import gpjobs, make_spec, predict_json, train_and_package

torch.set_num_threads(1)


def test_attention_keeps_shapes_and_starts_as_identity():
    from gpjobs.training.models.change import SpatialTemporalAttention

    attention = SpatialTemporalAttention(16, (1, 2, 4))
    before, after = torch.randn(2, 16, 9, 11), torch.randn(2, 16, 9, 11)
    out_b, out_a = attention(before, after)
    assert out_b.shape == before.shape and torch.equal(out_b, before)  # gate 0 at start
    with torch.no_grad():
        attention.gate.fill_(1.0)
    out_b, out_a = attention(before, after)
    assert not torch.equal(out_b, before) and out_a.shape == after.shape


def test_contrastive_loss_is_batch_balanced():
    from gpjobs.training.models.change import contrastive_loss

    changed = torch.zeros(1, 10, 10, dtype=torch.bool)
    changed[0, :1, :5] = True  # 5 changed pixels, 95 unchanged
    perfect = torch.where(changed, torch.tensor(2.0), torch.tensor(0.0))
    assert float(contrastive_loss(perfect, changed)) == 0.0
    # a miss on the few changed pixels costs as much as a miss on all unchanged pixels
    assert float(contrastive_loss(torch.zeros(1, 10, 10), changed)) == pytest.approx(4.0)
    assert float(contrastive_loss(torch.full((1, 10, 10), 2.0), changed)) == pytest.approx(4.0)


@pytest.fixture(scope="module")
def change_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("change")
    # 24 training chips: with fewer steps BatchNorm's running statistics lag the weights (eval-mode
    # distances too small) and the validation f1 trails the training loss by several epochs
    return train_and_package(
        tmp,
        write_change_detection(tmp, n=32, size=32),
        "CHANGEDETECTOR",
        backbone_model="RESNET18",
        max_epochs=5,
        stop_training=False,
        freeze_model=False,
    )


@pytest.mark.slow
def test_change_detector_learns(change_run):
    epochs = change_run.epochs
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    metrics = change_run.metrics
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("precision", "recall", "f1"))
    assert metrics["f1"] > 0.6, metrics  # changed pixels are ~27%: "all changed" gives f1 ~0.43


@pytest.mark.slow
def test_change_package(change_run):
    assert {"model.emd", "model.pth", "model.pt", "ModelCharacteristics/show_results.png"} <= change_run.members
    emd = change_run.emd
    assert emd["ModelName"] == "ChangeDetector" and emd["ModelConfiguration"] == "change_detection"
    assert emd["ModelType"] == "ImageClassification" and emd["MetaDataMode"] == "ChangeDetection"
    assert emd["ModelParameters"]["attention_type"] == "PAM"
    assert float(emd["f1"]) == pytest.approx(change_run.metrics["f1"], rel=1e-3)


@pytest.mark.slow
def test_change_predict_from_package_reproduces_validation_f1(change_run):
    """load_model + the family's paired predict (what `gpjobs predict` does for paired models)."""
    from gpjobs.export import read_chip
    from gpjobs.training.data import to_model_input
    from gpjobs.training.package import load_model, open_package

    folder = change_run.folder
    data = change_run.validation_data("change")
    tp = fp = fn = 0
    with open_package(change_run.package) as package:
        family, model = load_model(package)
        for i, rec in enumerate(data.valid.records):
            before, after = family.paired_chips(rec.image)
            assert after == rec.image2
            x = torch.cat([to_model_input(read_chip(p), family.info) for p in (before, after)])[None]
            pred = family.predict(model, x)[0]
            mask = torch.as_tensor(pred["_mask"]) > 0
            truth = data.valid[i][2] > 0
            tp += int((mask & truth).sum())
            fp += int((mask & ~truth).sum())
            fn += int((~mask & truth).sum())
        with pytest.raises(ValueError, match="BEFORE,AFTER"):
            family.paired_chips(folder / "labels" / rec.label.name)
        assert family.paired_chips(f"{before},{after}") == (before, after)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    assert f1 == pytest.approx(change_run.metrics["f1"], abs=1e-6)


@pytest.mark.slow
def test_bam_attention_trains(tmp_path):
    run = train_and_package(
        tmp_path,
        write_change_detection(tmp_path, n=8, size=32),
        "CHANGEDETECTOR",
        backbone_model="RESNET18",
        max_epochs=1,
        arguments={"attention_type": "BAM"},
    )
    assert run.emd["ModelParameters"]["attention_type"] == "BAM"


def test_change_detector_refuses_plain_classified_tiles(tmp_path):
    from gpjobs.tasks.params import ParameterError
    from tests.builders.exports import write_classified_tiles

    folder = write_classified_tiles(tmp_path, n=8, size=32)
    with pytest.raises(ParameterError, match="cannot train model_type CHANGEDETECTOR .it needs ChangeDetection"):
        make_spec(tmp_path, [folder], "CHANGEDETECTOR", backbone_model="RESNET18")


@pytest.mark.slow
def test_gpjobs_predict_cli_pairs_before_and_after(change_run, tmp_path):
    """The command line finds the images2/ partner of an images/ chip (or takes BEFORE,AFTER)."""
    chip = sorted((change_run.folder / "images").iterdir())[0]
    assert len(predict_json(change_run.package, chip, "--masks-dir", tmp_path / "masks")) == 1  # one per chip
    assert list((tmp_path / "masks").iterdir())
    lonely = tmp_path / "lonely.tif"
    lonely.write_bytes(chip.read_bytes())
    done = gpjobs("predict", change_run.package, str(lonely))
    assert done.returncode != 0 and "BEFORE,AFTER" in done.stderr + done.stdout
