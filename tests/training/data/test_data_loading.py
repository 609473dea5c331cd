"""The torch side: samples per task, class-index mapping, joint augmentation, split, normalisation, loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpjobs.export import DataError, DataInfo, Normalization, read_chip
from gpjobs.training.data import open_training_data, to_model_input
from tests.builders.exports import (
    class_level,
    set_label_value,
    write_classified_tiles,
    write_imagenet,
    write_kitti,
    write_labeled_tiles,
    write_multilabeled_tiles,
    write_pascal_voc,
    write_rcnn_masks,
)

torch.set_num_threads(1)


def _unnormalised(image: torch.Tensor, info: DataInfo) -> torch.Tensor:
    """Back to the 0..1 scaled pixels, to compare brightness with the builder's class levels."""
    mean = torch.tensor(info.normalization.mean)[:, None, None]
    std = torch.tensor(info.normalization.std)[:, None, None]
    return image * std + mean


def test_segmentation_maps_values_to_indices(tmp_path):
    folder = write_classified_tiles(tmp_path, n=6, classes=((3, "water"), (255, "roof")))
    data = open_training_data([folder], task="segmentation", validation_percent=0, augment=False)
    assert [c.value for c in data.info.classes] == [3, 255]
    image, mask = data.train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.int64 and set(mask.unique().tolist()) <= {0, 1, 2}
    assert data.class_weights is not None and len(data.class_weights) == 3


@pytest.mark.parametrize("writer", [write_classified_tiles, write_pascal_voc, write_rcnn_masks])
def test_augmentation_moves_targets_with_pixels(tmp_path, writer):
    """Whatever flip/rotation is drawn, the target still sits on the bright pixels of its class."""
    folder = writer(tmp_path, n=4)
    data = open_training_data([folder], task="x", validation_percent=0, augment=True)
    lo = class_level(0, 2) / 255.0 - 0.1  # brightness of the dimmest class, scaled to 0..1
    torch.manual_seed(0)
    for _ in range(6):
        for i in range(len(data.train)):
            image, target = data.train[i]
            bright = _unnormalised(image, data.info).mean(0)
            if isinstance(target, torch.Tensor):
                assert bright[target > 0].mean() > lo and bright[target == 0].mean() < lo
                continue
            for box in target["boxes"].round().int().tolist():
                x0, y0, x1, y1 = box
                assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
                assert bright[y0:y1, x0:x1].mean() > lo
            if "masks" in target:
                assert all(bright[m.bool()].mean() > lo for m in target["masks"])


def test_detection_targets_and_resize(tmp_path):
    folder = write_kitti(tmp_path, n=4, bands=6, dtype="uint16")
    data = open_training_data([folder], task="detection", chip_size=64, validation_percent=0, augment=False)
    image, target = data.train[0]
    assert image.shape == (6, 64, 64)
    raw = data.train.records[0].objects
    assert torch.allclose(target["boxes"][0], torch.tensor(raw[0][1]) * 2)
    assert target["labels"].dtype == torch.int64 and int(target["labels"].min()) >= 1
    images, targets = next(iter(data.loaders(2)[0]))
    assert images.shape == (2, 6, 64, 64) and isinstance(targets, list) and len(targets) == 2


def test_classification_and_multilabel(tmp_path):
    data = open_training_data([write_labeled_tiles(tmp_path, n=8)], task="classification", validation_percent=25)
    assert data.info.task == "classification"
    assert sorted(int(data.valid[i][1]) for i in range(len(data.valid))) == [0, 1]  # stratified split
    # Learnable: the class is the chip brightness.
    levels = [(float(_unnormalised(img, data.info).mean()), int(y)) for img, y in data.train]
    assert max(v for v, y in levels if y == 0) < min(v for v, y in levels if y == 1)
    multi = open_training_data([write_multilabeled_tiles(tmp_path, n=8)], task="classification")
    image, target = multi.train[0]
    assert multi.info.task == "multilabel" and target.dtype == torch.float32 and target.shape == (3,)
    imagenet = open_training_data([write_imagenet(tmp_path, n=6)], task="classification", validation_percent=0)
    assert sorted(int(y) for _, y in imagenet.train) == [0, 0, 0, 1, 1, 1]


def test_split_is_seeded_and_reproducible(tmp_path):
    folder = write_classified_tiles(tmp_path, n=20)
    stems = lambda d: [r.stem for r in d.valid.records]  # noqa: E731
    a = open_training_data([folder], task="segmentation", validation_percent=20, seed=1)
    b = open_training_data([folder], task="segmentation", validation_percent=20, seed=1)
    c = open_training_data([folder], task="segmentation", validation_percent=20, seed=2)
    assert stems(a) == stems(b) and len(stems(a)) == 4 and stems(a) != stems(c)
    assert not set(stems(a)) & {r.stem for r in a.train.records}


def test_train_loader_drops_partial_batch_only_when_it_has_two(tmp_path):
    data = open_training_data([write_classified_tiles(tmp_path, n=5)], task="segmentation", validation_percent=0)
    train, _ = data.loaders(4)
    assert [len(x) for x, _ in train] == [4]
    train, _ = data.loaders(8)
    assert [len(x) for x, _ in train] == [5]


def test_loader_with_a_worker(tmp_path):
    data = open_training_data([write_pascal_voc(tmp_path, n=6)], task="detection", validation_percent=0)
    train, valid = data.loaders(2, num_workers=1)
    assert sum(len(t) for _, t in train) == 6 and train.persistent_workers


def test_normalisation_regimes_and_emd_round_trip(tmp_path):
    rgb = open_training_data([write_pascal_voc(tmp_path, n=3, name="rgb")], task="detection")
    assert rgb.info.normalization.kind == "imagenet" and rgb.info.to_emd()["IsImageNetNormalization"] is True
    ms_folder = write_classified_tiles(tmp_path, n=4, bands=6, dtype="uint16", newer_metadata=True, name="ms")
    ms = open_training_data([ms_folder], task="segmentation", extract_bands=[0, 2, 4, 5])
    assert ms.info.is_multispectral and ms.info.bands == 4 and ms.info.source_bands == 6
    emd = json.loads(json.dumps(ms.info.to_emd()))
    assert emd["ExtractBands"] == [0, 2, 4, 5] and len(emd["NormalizationStats"]["band_min_values"]) == 4
    again = DataInfo.from_emd(emd)
    assert again.normalization == ms.info.normalization and again.classes == ms.info.classes
    chip = read_chip(ms.valid.records[0].image)
    assert torch.allclose(to_model_input(chip, again), ms.valid[0][0], atol=1e-5)
    assert torch.allclose(to_model_input(chip[:, :, [0, 2, 4, 5]], again), ms.valid[0][0], atol=1e-5)
    swapped = open_training_data([ms_folder], task="segmentation", extract_bands=[5, 4, 3, 2, 1, 0], augment=False)
    assert torch.allclose(to_model_input(chip, swapped.info)[0], swapped.valid[0][0][0], atol=1e-5)
    # Without band statistics in the export they are computed from the chips, close to the recorded ones.
    old = open_training_data(
        [write_classified_tiles(tmp_path, n=4, bands=6, dtype="uint16", name="old")], task="segmentation"
    )
    assert any("band statistics" in w for w in old.report.warnings)
    picked = [old.info.normalization.band_mean[b] for b in (0, 2, 4, 5)]
    assert np.allclose(picked, ms.info.normalization.band_mean, rtol=0.2)


def test_normalization_follows_arcgis_formula():
    norm = Normalization.from_band_stats([{"min": 10, "max": 110, "mean": 60, "std": 20}])
    assert norm.mean == [0.5] and norm.std == pytest.approx([20 * 0.5 / 60])
    out = norm.apply(np.array([[[60]]], np.uint16))
    assert out[0, 0, 0] == pytest.approx(0.0, abs=1e-5)


def test_bad_data_raises_data_error_naming_files(tmp_path):
    folder = write_classified_tiles(tmp_path, n=3)
    path = set_label_value(folder, 77)
    with pytest.raises(DataError) as err:
        open_training_data([folder], task="segmentation")
    assert path.name in str(err.value) and not err.value.report.ok
    with pytest.raises(DataError, match="extract_bands"):
        open_training_data([write_kitti(tmp_path, n=2)], task="detection", extract_bands=[5])


def test_two_folders_train_together(tmp_path):
    a = write_classified_tiles(tmp_path, n=4, name="a")
    b = write_classified_tiles(tmp_path, n=4, name="b", seed=9)
    data = open_training_data([a, b], task="segmentation", validation_percent=25)
    assert len(data.train) + len(data.valid) == 8 and {r.folder for r in data.train.records} == {0, 1}


def test_real_kitti_sample(samples_dir):
    data = open_training_data([samples_dir / "phragmites-kitti"], task="detection")
    assert data.info.bands == 6 and data.info.dtype == "uint16" and data.info.is_multispectral
    image, target = data.valid[0]
    assert image.shape == (6, 32, 32) and torch.isfinite(image).all() and len(target["boxes"]) == 1


def test_real_palm_sample(samples_dir):
    data = open_training_data([samples_dir / "palm-pascal-voc"], task="detection", chip_size=224)
    assert data.info.normalization.kind == "imagenet" and data.info.classes[0].name == "Palm"
    image, target = data.train[0]
    assert image.shape == (3, 224, 224) and float(target["boxes"].max()) <= 224.0 + 1e-3


def test_info_from_arcgis_trained_emd(samples_dir):
    emd = json.loads((samples_dir / "building-unet-classified-tiles/models/30e/30e.emd").read_text())
    info = DataInfo.from_emd(emd)
    assert info.task == "segmentation" and info.chip_size == (400, 400) and info.extract_bands == [0, 1, 2]
    assert [c.value for c in info.classes] == [1, 2] and info.normalization.kind == "imagenet"
