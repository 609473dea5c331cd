"""Raw batches (file dtype across processes, finished after arrival) give exactly the finished samples.

The loaders ship decoded pixels and compact masks and normalise/augment in the consuming process; these
tests pin that consumers still get what `dataset[i]` + the usual collate give, bit for bit, per task,
for every flip/rotation, with workers, on a device, with mixed chip sizes.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gpjobs.export import read_chip
from gpjobs.training.data import open_training_data
from gpjobs.training.data.batching import RawCollate, RawSamples, _Finisher
from gpjobs.training.data.pixels import dihedral, dihedral_boxes
from tests.builders.exports import (
    write_change_detection,
    write_classified_tiles,
    write_image,
    write_kitti,
    write_label_raster,
    write_labeled_tiles,
    write_multilabeled_tiles,
    write_panoptic,
    write_pascal_voc,
    write_pix2pix,
    write_rcnn_masks,
)

torch.set_num_threads(1)

WRITERS = {
    "segmentation": (write_classified_tiles, "segmentation"),
    "classification": (write_labeled_tiles, "classification"),
    "multilabel": (write_multilabeled_tiles, "classification"),
    "detection": (write_pascal_voc, "detection"),
    "instance": (write_rcnn_masks, "instance"),
    "change": (write_change_detection, "change"),
    "translation": (write_pix2pix, "translation"),
    "panoptic": (write_panoptic, "panoptic"),
}


def assert_same(a, b, path="batch"):
    """Structures equal, tensors bit-identical with the same dtype."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    else:
        assert type(a) is type(b) and len(a) == len(b), f"{path}: {type(a)} vs {type(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")


def reference_batch(data, indices, seed):
    """What the loaders delivered before raw batching: finished samples, collated as torch does."""
    torch.manual_seed(seed)
    samples = [data.train[i] for i in indices]
    collate = DataLoader(data.train, collate_fn=data.loaders(1)[0].collate_fn).collate_fn
    return collate(samples)


def raw_batch(data, indices, seed, device=None):
    torch.manual_seed(seed)
    raw = RawCollate(data.info.task)([data.train.raw(i) for i in indices])
    return _Finisher(data.train, device, pin=False)(raw)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_finished_batches_equal_collated_samples_for_every_geometry(tmp_path, kind):
    writer, task = WRITERS[kind]
    data = open_training_data([writer(tmp_path, n=8)], task=task, validation_percent=0, augment=True)
    assert data.info.task == kind
    indices = list(range(len(data.train)))
    codes = set()
    for seed in range(4):  # 4 x 8 draws: all 8 flip/rotation codes show up (checked below)
        torch.manual_seed(seed)
        codes.update(int(data.train.raw(i)[0]) for i in indices)
        assert_same(raw_batch(data, indices, seed), reference_batch(data, indices, seed))
    assert codes == set(range(8))


def test_workers_ship_file_dtype_and_consumers_get_float32_int64(tmp_path):
    data = open_training_data([write_classified_tiles(tmp_path, n=8)], task="segmentation", validation_percent=0)
    codes, images, masks = RawCollate("segmentation")([data.train.raw(i) for i in range(4)])
    assert images.dtype == torch.uint8 and images.shape == (4, 32, 32, 3)  # 1/4 of float32's bytes
    assert masks.dtype == torch.uint8 and codes.dtype == torch.uint8  # 1/8 of int64's bytes
    plain, _ = data.loaders(4, num_workers=0)
    worker, _ = data.loaders(4, num_workers=1)
    for loader in (plain, worker):
        batches = list(loader)
        assert len(batches) == 2
        for images, masks in batches:
            assert images.dtype == torch.float32 and images.shape == (4, 3, 32, 32) and images.is_contiguous()
            assert masks.dtype == torch.int64 and masks.shape == (4, 32, 32)
    # No augmentation on the validation side: the worker's batches are the samples themselves.
    _, valid = open_training_data(
        [write_classified_tiles(tmp_path / "v", n=8)], task="segmentation", validation_percent=50
    ).loaders(2, num_workers=1)
    for b, (images, masks) in enumerate(valid):
        for j in range(len(images)):
            image, mask = valid.dataset[b * 2 + j]
            assert torch.equal(images[j], image) and torch.equal(masks[j], mask)


def test_device_path_gives_the_same_batches(tmp_path):
    """device=: raw batches move first and are finished there (CPU here; CUDA on a GPU machine)."""
    folder = write_kitti(tmp_path, n=6, bands=6, dtype="uint16")
    data = open_training_data([folder], task="detection", chip_size=48, validation_percent=0, augment=True)
    for seed in range(3):
        assert_same(raw_batch(data, range(6), seed, device=torch.device("cpu")), reference_batch(data, range(6), seed))
    seg = open_training_data(
        [write_classified_tiles(tmp_path, n=4)], task="segmentation", validation_percent=0, augment=False
    )
    a, _ = seg.loaders(2, device="cpu")
    b, _ = seg.loaders(2)
    for x, y in zip(a, b):
        assert_same(x, y)


def test_chips_of_another_size_are_resized_in_the_batch(tmp_path):
    folder = write_classified_tiles(tmp_path, n=6, size=32)
    odd = sorted((folder / "images").glob("*.tif"))[0]
    write_image(odd, np.full((40, 40, 3), 200, np.uint8))
    write_label_raster(folder / "labels" / odd.name, np.ones((40, 40), np.uint8))
    data = open_training_data([folder], task="segmentation", validation_percent=0, augment=True)
    assert data.info.chip_size == (32, 32) and any("resized" in w for w in data.report.warnings)
    raw = RawCollate("segmentation")([data.train.raw(i) for i in range(6)])
    assert isinstance(raw[1], list)  # ragged: finished chip by chip
    for seed in range(3):
        batch = raw_batch(data, range(6), seed)
        assert batch[0].shape == (6, 3, 32, 32) and batch[1].shape == (6, 32, 32)
        assert_same(batch, reference_batch(data, range(6), seed))


def test_dihedral_codes_are_the_eight_flips_and_rotations_and_boxes_follow():
    image = torch.arange(5 * 5).reshape(5, 5, 1)
    views = {code: dihedral(image, code, 0)[..., 0] for code in range(8)}
    expected = [torch.rot90(image[..., 0], k, (0, 1)) for k in range(4)]
    expected += [e.flip(1) for e in expected]
    assert sorted(map(str, views.values())) == sorted(map(str, expected))  # each appears exactly once
    for code, view in views.items():
        # The box around the pixel holding value 7 (row 1, column 2) lands where that value went.
        box = dihedral_boxes(torch.tensor([[2.0, 1.0, 3.0, 2.0]]), code, 5, 5)[0].int().tolist()
        row, col = (view == 7).nonzero()[0].tolist()
        assert box == [col, row, col + 1, row + 1], code


def test_extracted_bands_stay_contiguous(tmp_path):
    """Band selection must not leave band-major strides: every later copy of the chip was 10x slower."""
    folder = write_kitti(tmp_path, n=2, bands=6, dtype="uint16")
    chip = sorted((folder / "images").glob("*.tif"))[0]
    full = read_chip(chip)
    picked = read_chip(chip, [4, 0, 2])
    assert picked.flags.c_contiguous and np.array_equal(picked, full[:, :, [4, 0, 2]])
    assert read_chip(chip, range(6)).flags.c_contiguous


def test_loader_forwards_attributes_and_accepts_a_sampler(tmp_path):
    data = open_training_data([write_labeled_tiles(tmp_path, n=8)], task="classification", validation_percent=0)
    train, _ = data.loaders(2, num_workers=1)
    assert train.persistent_workers and isinstance(train.generator, torch.Generator)
    assert isinstance(train.loader.dataset, RawSamples) and train.dataset is data.train
    sampler = torch.utils.data.SequentialSampler(range(4))
    ordered, _ = data.loaders(2, sampler=sampler)
    labels = torch.cat([y for _, y in ordered])
    assert labels.tolist() == [int(data.train[i][1]) for i in range(4)]


def test_label_values_of_every_dtype_map_to_model_indices(tmp_path):
    """uint16 labels (class 300), uint8 ones (chips without it) and an int16 one in one batch (shipped
    widened to uint16): the mapping matches a direct one. (Values outside the class list never get
    here: the report refuses them.)"""
    folder = write_classified_tiles(tmp_path, n=6, classes=((1, "a"), (300, "b")))
    labels = sorted((folder / "labels").glob("*.tif"))
    assert {read_chip(p).dtype for p in labels} == {np.dtype(np.uint8), np.dtype(np.uint16)}
    stray = read_chip(labels[1])[:, :, 0].astype(np.int16)
    stray[0, :3] = [0, 1, 300]
    write_image(labels[1], stray)
    assert read_chip(labels[1]).dtype == np.int16
    data = open_training_data([folder], task="segmentation", validation_percent=0, augment=True)
    table = {0: 0, 1: 1, 300: 2}
    assert RawCollate("segmentation")([data.train.raw(i) for i in range(6)])[2].dtype == torch.uint16
    for seed in range(3):
        batch = raw_batch(data, range(6), seed)
        assert_same(batch, reference_batch(data, range(6), seed))
    plain = open_training_data([folder], task="segmentation", validation_percent=0, augment=False)
    for i, rec in enumerate(plain.train.records):
        values = read_chip(rec.label)[:, :, 0].astype(np.int64)
        expected = np.vectorize(lambda v: table.get(int(v), 0))(values)
        assert np.array_equal(plain.train[i][1].numpy(), expected), rec.label.name


def test_worker_batches_reuse_ring_slots_across_epochs_and_abandoned_passes(tmp_path):
    """More batches than slots, three passes after one abandoned mid-way: every batch is still its
    samples, slots are really used (taken while a pass runs) and all free again after full passes (the
    abandoned pass's stale batches, dropped by torch, hold their slots one pass longer)."""
    data = open_training_data(
        [write_classified_tiles(tmp_path, n=40)], task="segmentation", validation_percent=50, augment=False
    )
    _, valid = data.loaders(2, num_workers=1)
    ring = valid.ring
    assert ring is not None and ring.state.shape == (1, 10)
    expected = [valid.dataset[i] for i in range(len(valid.dataset))]
    it = iter(valid)
    next(it)
    deadline = time.monotonic() + 10  # the worker fills its prefetched batches into slots meanwhile
    while not int((ring.state > 0).sum()) and time.monotonic() < deadline:
        time.sleep(0.05)
    taken = int((ring.state > 0).sum())
    del it  # abandoned: its in-flight slots are reclaimed by the next pass's epoch
    for epoch in range(3):
        seen = 0
        for images, masks in valid:
            for j in range(len(images)):
                assert torch.equal(images[j], expected[seen][0]) and torch.equal(masks[j], expected[seen][1])
                seen += 1
        assert seen == len(expected) and len(expected) > 10
        assert epoch == 0 or int(ring.state.sum()) == 0
    assert taken >= 1


def test_ring_slot_protocol(monkeypatch):
    from gpjobs.training.data import packing

    class Info:
        id = 0

    monkeypatch.setattr(packing, "get_worker_info", lambda: Info())
    ring = packing.SlotRing(workers=1, slots=2, slot_bytes=128)
    assert ring.claim(129) is None  # too big: the caller falls back to a fresh segment
    first, second = ring.claim(64), ring.claim(64)
    assert {first, second} == {(0, 0), (0, 1)} and ring.claim(64) is None  # all taken
    ring.release(first)
    assert ring.claim(64) == first
    ring.new_epoch()  # slots filled in an earlier pass are reusable (torch dropped those batches)
    assert ring.claim(64) is not None and ring.claim(64) is not None and ring.claim(64) is None
    packer = packing.Packer()
    ref = packer.stack([np.arange(6, dtype=np.uint16).reshape(2, 3)] * 2)
    ring.new_epoch()
    packed = packer.pack({"x": ref, "keep": packer.tensor(torch.tensor([7, 8]))}, ring)
    assert packed.buffer is None and packed.slot is not None  # in a slot, not its own segment
    out = packed.unpack(ring)
    assert out["x"].dtype == torch.uint16 and out["x"].to(torch.int64).tolist() == [[[0, 1, 2], [3, 4, 5]]] * 2
    assert (
        out["keep"].tolist() == [7, 8]
        and out["keep"].untyped_storage().data_ptr() != ring.buffer(packed.slot).untyped_storage().data_ptr()
    )  # kept targets are copies


def test_loader_decodes_with_libtiff_only_where_it_agrees_and_gives_the_same_samples(tmp_path):
    """A folder whose first chip and label decode alike with libtiff and tifffile is read with libtiff
    (faster) and gives the very samples tifffile gives; a folder of PNG chips keeps Pillow."""
    data = open_training_data(
        [write_classified_tiles(tmp_path / "tif", n=4)], task="segmentation", validation_percent=0, augment=True
    )
    assert data.train._libtiff
    fast = raw_batch(data, range(4), 3)
    data.train._libtiff = False
    assert_same(fast, raw_batch(data, range(4), 3))
    png = open_training_data(
        [write_classified_tiles(tmp_path / "png", n=2, ext="png")], task="segmentation", validation_percent=0
    )
    assert not png.train._libtiff


def test_masks_of_classes_one_to_k_are_widened_and_other_values_still_mapped():
    """With classes 1..K the table is the identity up to K: a batch without other values is only widened,
    one with a value above K (NoData) or a gap takes the table, both as np.take would give."""
    from gpjobs.training.data.pixels import finish_masks

    table = torch.zeros(256, dtype=torch.int64)
    table[1:4] = torch.tensor([1, 2, 3])
    table[7] = 4  # a class value after a gap
    raw = torch.from_numpy(np.random.default_rng(0).integers(0, 4, (3, 8, 8), dtype=np.uint8))
    for values in (raw, torch.where(raw == 3, torch.tensor(7, dtype=torch.uint8), raw)):
        expected = table[values.long()]
        for codes in ([0, 0, 0], [1, 6, 7]):
            got = finish_masks(values, codes, table, (8, 8), identity_upto=3)
            want = torch.stack([dihedral(expected[i], k, 0) for i, k in enumerate(codes)])
            assert got.dtype == torch.int64 and torch.equal(got, want)
