"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Test processes train side by side with the server's children and with each other on a 2-core box:
# one intra-op thread each, or every one of them runs several times slower (environment.md §8).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = Path(os.environ.get("GPJOBS_SAMPLES_DIR", REPO_ROOT.parent / "shared" / "samples"))


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real Esri exports in ../shared/samples (read-only; never copied into the repo)."""
    if not SAMPLES_DIR.is_dir():
        pytest.skip(f"real export samples not found at {SAMPLES_DIR} (set GPJOBS_SAMPLES_DIR)")
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
