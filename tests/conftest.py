"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test processes train side by side with the server's children and with each other on a 2-core box:
# one intra-op thread each, or every one of them runs several times slower (environment.md §8).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = Path(os.environ.get("GPJOBS_SAMPLES_DIR", REPO_ROOT.parent / "shared" / "samples"))


@pytest.hookimpl(trylast=True)  # after `-m` deselection: no torch import when no gpu test is left
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, with the reason, where torch sees no CUDA device."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch  # only here: collecting the torch-free tests must not pay for it

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
        for item in gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real Esri exports in ../shared/samples (read-only; never copied into the repo)."""
    if not SAMPLES_DIR.is_dir():
        pytest.skip(f"real export samples not found at {SAMPLES_DIR} (set GPJOBS_SAMPLES_DIR)")
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, str]]:
    """A local Ray head (loopback, 2 CPUs) for the whole session: {"address": ..., "env": ...}, where env
    is what a server (and the head's workers) need: the session's auth token, and this tree on PYTHONPATH."""
    pytest.importorskip("ray", reason="the Ray pool needs the ray extra: pip install 'gpjobs[ray]'")
    from tests.harness.ray_head import local_ray_head

    with local_ray_head(2) as cluster:
        yield cluster
