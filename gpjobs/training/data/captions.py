"""IMAGECAPTIONER data: chips with their reference captions, the vocabulary, padded caption batches.

A sample is (image float32 [C, H, W], caption ids int64 [T] = BOS words EOS, references: every caption of
the chip as word lists). Training draws one of a chip's captions at random (torch's RNG, so each epoch is
reseeded by the engine); validation always uses the first for the loss and all of them for BLEU. Chips
are not flipped or rotated: captions may name positions ("in the top left corner").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gpjobs.export.captions import Vocabulary, parse_captions, tokenize
from gpjobs.export.chips import read_chip
from gpjobs.export.info import DataInfo
from gpjobs.export.readers import ChipRecord
from gpjobs.export.report import Scan
from gpjobs.training.data.datasets import to_model_input
from gpjobs.training.data.loading import SplitData, shard_loader, split_records, worker_init

CaptionBatch = tuple[torch.Tensor, torch.Tensor, list[list[list[str]]]]


class CaptionDataset(Dataset):
    """Chips and captions of one split."""

    def __init__(self, records: Sequence[ChipRecord], info: DataInfo, *, train: bool) -> None:
        self.records = list(records)
        self.info, self.train = info, train
        self.vocab: Vocabulary | None = None  # set by CaptionData.build_vocabulary
        self.captions: list[list[str]] = []
        for rec in self.records:
            assert rec.label is not None  # list_records keeps only the chips that have a label
            self.captions.append(parse_captions(rec.label, rec.root))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
        image = to_model_input(read_chip(self.records[index].image), self.info)
        captions = self.captions[index]
        pick = int(torch.randint(len(captions), ())) if self.train and len(captions) > 1 else 0
        assert self.vocab is not None, "CaptionData.build_vocabulary comes before the first sample"
        ids = torch.tensor(self.vocab.encode(captions[pick]), dtype=torch.int64)
        return image, ids, [tokenize(c) for c in captions]


def collate_captions(samples: list[tuple[torch.Tensor, torch.Tensor, list[list[str]]]]) -> CaptionBatch:
    """(images [B, C, H, W], caption ids [B, T] padded with 0, references per chip)."""
    images = torch.stack([s[0] for s in samples])
    longest = max(len(s[1]) for s in samples)
    ids = torch.zeros(len(samples), longest, dtype=torch.int64)
    for i, (_, caption, _) in enumerate(samples):
        ids[i, : len(caption)] = caption
    return images, ids, [s[2] for s in samples]


@dataclass
class CaptionData(SplitData[CaptionDataset, CaptionDataset]):
    """Training data whose datasets are CaptionDatasets; `vocab` is built from the training captions."""

    vocab: Vocabulary | None = None

    def build_vocabulary(self, min_freq: int) -> Vocabulary:
        """The vocabulary of the training captions (the family calls this with its vocab_min_freq argument)."""
        from gpjobs.export.report import DataError

        vocab = Vocabulary.build((c for captions in self.train.captions for c in captions), min_freq=min_freq)
        if len(vocab) <= 4:
            self.report.errors.append(
                f"no word occurs {min_freq} times in the training captions, so the vocabulary is empty; add "
                "captions or lower the vocab_min_freq argument"
            )
            raise DataError(self.report)
        self.vocab = self.train.vocab = self.valid.vocab = vocab
        return vocab

    def loaders(
        self,
        batch_size: int,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
        sampler: Sampler | None = None,
        shard: tuple[int, int] | None = None,
    ) -> tuple[DataLoader, DataLoader]:
        common: dict[str, Any] = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "collate_fn": collate_captions,
        }
        if num_workers > 0:
            common.update(persistent_workers=True, worker_init_fn=worker_init)
        order: dict[str, Any] = (
            {"sampler": sampler}
            if sampler is not None
            else {"shuffle": True, "generator": torch.Generator().manual_seed(self.seed)}
        )
        batches = math.ceil(len(self.train) / batch_size)
        train = DataLoader(self.train, drop_last=batches >= 2, **order, **common)
        valid = DataLoader(self.valid, shuffle=False, **common)
        return (shard_loader(train, *shard) if shard is not None else train), valid


def open_caption_data(scan: Scan, info: DataInfo, *, validation_percent: float, seed: int) -> CaptionData:
    """Split the chips into the two datasets (the vocabulary comes later: `build_vocabulary`)."""
    from gpjobs.export.report import DataError

    train_records, valid_records = split_records(scan.records, validation_percent, seed, None)
    report = scan.report
    if not train_records:
        report.errors.append(f"only {len(scan.records)} chips: nothing left to train on after the validation split")
        raise DataError(report)
    return CaptionData(
        info=info,
        report=report,
        train=CaptionDataset(train_records, info, train=True),
        valid=CaptionDataset(valid_records, info, train=False),
        class_weights=None,
        export_emd=dict(scan.metas[0].emd),
        seed=seed,
    )
