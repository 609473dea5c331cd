"""Loaders on a CUDA machine (marked `gpu`: skipped without a CUDA device): `pin_memory=True` gives pinned
CPU batches, `device=` gives batches finished on the GPU, and both hold the same values as plain CPU batches."""

from __future__ import annotations

import pytest
import torch

from gpjobs.training.data import open_training_data
from tests.builders.exports import write_classified_tiles, write_pascal_voc

pytestmark = pytest.mark.gpu


def _batches(loader) -> list:
    return list(loader)


def test_pinned_batches_equal_plain_ones(tmp_path):
    data = open_training_data(
        [write_classified_tiles(tmp_path, n=8, size=32)], task="segmentation", validation_percent=25, augment=False
    )
    plain, pinned = _batches(data.loaders(2)[1]), _batches(data.loaders(2, pin_memory=True)[1])
    assert len(plain) == len(pinned) >= 1
    for (images, masks), (p_images, p_masks) in zip(plain, pinned):
        assert p_images.is_pinned() and p_masks.is_pinned() and not images.is_pinned()
        assert torch.equal(images, p_images) and torch.equal(masks, p_masks)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_device_batches_are_finished_on_the_gpu(tmp_path, num_workers):
    folder = write_classified_tiles(tmp_path, n=8, size=32, bands=5, dtype="uint16")
    data = open_training_data([folder], task="segmentation", validation_percent=25, augment=False)
    plain = _batches(data.loaders(2)[1])
    on_gpu = _batches(data.loaders(2, num_workers=num_workers, device="cuda")[1])
    assert len(plain) == len(on_gpu) >= 1
    for (images, masks), (g_images, g_masks) in zip(plain, on_gpu):
        assert g_images.is_cuda and g_masks.is_cuda
        assert g_images.dtype == images.dtype == torch.float32 and g_masks.dtype == masks.dtype
        assert torch.allclose(images, g_images.cpu(), atol=1e-5) and torch.equal(masks, g_masks.cpu())


def test_detection_targets_follow_the_batch_to_the_gpu(tmp_path):
    data = open_training_data(
        [write_pascal_voc(tmp_path, n=6, size=32)], task="detection", validation_percent=0, augment=False
    )
    plain = _batches(data.loaders(2)[0])
    on_gpu = _batches(data.loaders(2, device=torch.device("cuda", 0))[0])
    assert len(plain) == len(on_gpu) >= 1
    for (images, targets), (g_images, g_targets) in zip(plain, on_gpu):
        assert g_images.is_cuda and torch.allclose(images, g_images.cpu(), atol=1e-5)
        for target, g_target in zip(targets, g_targets):
            assert set(target) == set(g_target) and all(g_target[k].is_cuda for k in g_target)
            assert all(torch.equal(target[k], g_target[k].cpu()) for k in target)
