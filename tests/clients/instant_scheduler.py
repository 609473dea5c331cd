"""A stand-in scheduler for in-process client tests: it claims each submitted job and publishes a small but
well-formed .dlpk at once (no torch, no child), through the same store calls as the real publisher.

It lets the real clients exercise the GP + portal protocol in seconds; the real scheduler and training child
are exercised by the subprocess tests (test_*_e2e.py).
"""

from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path

from gpjobs.domain import Item, Job, JobStatus, MessageType, new_item_id, now_ms
from gpjobs.store import Store


class InstantScheduler:
    """`submitted()` / `cancel()` like the real scheduler; jobs succeed after a short, visible Executing phase."""

    def __init__(self, store: Store, content_dir: Path, *, executing_s: float = 1.5) -> None:
        self.store, self.content_dir, self.executing_s = store, content_dir, executing_s
        self._tasks: set[asyncio.Task] = set()

    def submitted(self) -> None:
        task = asyncio.get_running_loop().create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel(self, job_id: str) -> Job:
        job = await self.store.get_job(job_id)
        if job is None or job.is_terminal:
            return job
        return await self.store.transition(job_id, JobStatus.CANCELLED, messages=[
            (MessageType.INFORMATIVE, "Cancel complete.")])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self) -> None:
        while (job := await self.store.claim_next_job("cpu", "instant-boot")) is not None:  # says Executing...
            await asyncio.sleep(self.executing_s)  # long enough for pollers to see esriJobExecuting
            await self._publish(job)

    async def _publish(self, job: Job) -> None:
        output = job.spec.get("output") or {}
        name = str(output.get("name") or job.job_id)
        path = self.content_dir / job.job_id / f"{name}.dlpk"
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as package:
            package.writestr(f"{name}.emd", json.dumps({"Framework": "PyTorch", "ModelType": job.model_type}))
        item = Item(id=new_item_id(), owner=job.owner, title=name, name=f"{name}.dlpk",
                    folder_id=output.get("folder_id"), size=path.stat().st_size, created_ms=now_ms(),
                    path=str(path), job_id=job.job_id, properties={"modelType": job.model_type})
        await self.store.publish_job(job.job_id, result={"id": item.id}, item=item, messages=[
            (MessageType.INFORMATIVE, "Training Finished")])
