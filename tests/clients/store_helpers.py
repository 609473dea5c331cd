"""Put published items into a real gpjobs Store the way a finished job does (create -> execute -> publish)."""

from __future__ import annotations

from pathlib import Path

from gpjobs.domain import Item, Job, JobStatus, new_item_id, new_job_id, now_ms
from gpjobs.store import Store


async def publish_item(store: Store, owner: str, title: str, path: Path, *, folder_id: str | None = None) -> Item:
    """A Deep Learning Package item owned by `owner`, published by a (fake) finished job of theirs."""
    job = await store.create_job(Job(job_id=new_job_id(), owner=owner, status=JobStatus.SUBMITTED, model_type="UNET"))
    await store.transition(job.job_id, JobStatus.EXECUTING)
    item = Item(
        id=new_item_id(),
        owner=owner,
        title=title,
        name=f"{title}.dlpk",
        path=str(path),
        size=path.stat().st_size,
        created_ms=now_ms(),
        folder_id=folder_id,
        job_id=job.job_id,
    )
    _, published, _ = await store.publish_job(job.job_id, result={"id": item.id}, item=item)
    assert published is not None
    return published
