"""A block journal: every finished block's result in the job's work folder, so that a run that was stopped
(server killed, child lost, shutdown) resumes with the blocks not yet done.

One file per block, written under a temporary name and renamed into place: a file that exists is complete.
`journal.json` records what the blocks belong to (package, rasters, grid, tiles, arguments); a journal written
for anything else is cleared rather than mixed in.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

HEADER = "journal.json"


class BlockJournal:
    """Finished blocks of one output, by block index."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder)
        header = self.folder / HEADER
        try:
            recorded = json.loads(header.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if recorded != fingerprint:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(header, json.dumps(fingerprint, sort_keys=True).encode("utf-8"))
        self._done = {
            int(p.name.split(".")[0])
            for p in self.folder.iterdir()
            if p.suffix in (".npy", ".json") and p.name != HEADER and p.name.split(".")[0].isdigit()
        }

    def __len__(self) -> int:
        return len(self._done)

    def done(self, index: int) -> bool:
        return index in self._done

    def save_pixels(self, index: int, block: np.ndarray) -> None:
        path = self.folder / f"{index}.npy"
        tmp = path.with_name(f".{index}.npy.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, block, allow_pickle=False)
        os.replace(tmp, path)
        self._done.add(index)

    def load_pixels(self, index: int) -> np.ndarray:
        return np.load(self.folder / f"{index}.npy", allow_pickle=False)

    def save_features(self, index: int, features: list[dict[str, Any]]) -> None:
        _write_atomic(self.folder / f"{index}.json", json.dumps(features).encode("utf-8"))
        self._done.add(index)

    def load_features(self, index: int) -> list[dict[str, Any]]:
        return json.loads((self.folder / f"{index}.json").read_text(encoding="utf-8"))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def finished_blocks(root: Path) -> int:
    """How many blocks the journals under `root` hold (what a resumed run will not compute again)."""
    if not root.is_dir():
        return 0
    return sum(
        1
        for p in root.rglob("*")
        if p.suffix in (".npy", ".json") and p.name != HEADER and p.name.split(".")[0].isdigit()
    )
