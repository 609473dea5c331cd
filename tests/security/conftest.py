"""Fixtures of the security suite: the scheduler harness of tests/integration (fake training child, real store)
and a file share holding a tiny export, plus the place outside every store an attacker points links at."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpjobs.paths import StoreRoots
from tests.builders.exports import write_classified_tiles
from tests.integration.conftest import Harness, harness, make_config, make_harness, store  # noqa: F401 - fixtures

__all__ = ["Harness"]


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """A registered file share with one Classified_Tiles export: exports/seg (4 chips of 32 px)."""
    root = tmp_path / "share"
    write_classified_tiles(root / "exports", n=4, size=32, name="seg")
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every store (what a link planted in a share points at)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.fixture
def roots(share: Path) -> StoreRoots:
    return StoreRoots(file_shares={"default": share})
