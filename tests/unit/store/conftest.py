from __future__ import annotations

import pytest

from gpjobs.domain import Job, JobStatus, new_job_id
from gpjobs.store import Store


@pytest.fixture
async def store(tmp_path):
    """A real file database (never :memory: — WAL and locking differ there)."""
    s = await Store.open(tmp_path / "gpjobs.sqlite3")
    yield s
    await s.close()


def new_job(owner: str = "alice", **fields) -> Job:
    fields.setdefault("spec", {"model_type": "UNET"})
    return Job(
        job_id=new_job_id(),
        owner=owner,
        status=JobStatus.SUBMITTED,
        model_type="UNET",
        inputs={"in_folder": "/fileShares/default/x"},
        **fields,
    )


@pytest.fixture
def make_job():
    """Build an unsaved Submitted job: make_job(owner="alice", **fields)."""
    return new_job
