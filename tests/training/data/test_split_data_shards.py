"""Every kind of training data takes the engine's `shard` argument: captions and tracking pairs too."""

from __future__ import annotations

import pytest

from gpjobs.training.data import open_training_data
from tests.builders.media import write_image_captioning, write_object_tracking


def _batch_sizes(loader) -> list[int]:
    return [len(batch[0]) for batch in loader]


@pytest.mark.parametrize("task", ["captioning", "tracking"])
def test_each_rank_trains_its_share_of_the_one_device_batches(tmp_path, task):
    if task == "captioning":
        folder = write_image_captioning(tmp_path, n=12, size=32, captions_per_chip=1)
    else:
        folder = write_object_tracking(tmp_path, n=4, size=32, frames=4)
    data = open_training_data([folder], task=task, validation_percent=25, seed=42)
    if task == "captioning":
        data.build_vocabulary(1)
    one, _ = data.loaders(4, shard=None)
    ranks = [data.loaders(4, shard=(rank, 2))[0] for rank in range(2)]
    whole = _batch_sizes(one)
    shares = [_batch_sizes(loader) for loader in ranks]
    assert len(whole) >= 2
    assert len(shares[0]) == len(shares[1]) == len(whole)
    assert [a + b for a, b in zip(*shares)] == whole  # the one-device batches, split over the two ranks
