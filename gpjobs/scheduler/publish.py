"""Publishing a finished model: the .dlpk goes into place atomically first, then ONE transaction inserts
the item and marks the job Succeeded. Repeating a publish is harmless (file name from the job id,
item unique per job)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from gpjobs import messages as texts
from gpjobs.config import Config
from gpjobs.domain import Item, Job, MessageType, new_item_id, now_ms
from gpjobs.store import Store
from gpjobs.tasks.train import TrainingRequest


def atomic_copy(source: Path, dest: Path) -> int:
    """Copy `source` to `dest` via a temp name, fsync, rename, fsync the folder; returns the size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with open(source, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dest.stat().st_size


def content_path(config: Config, job: Job, name: str) -> Path:
    """Where a job's package lives in the content store (derived from the job id: idempotent)."""
    assert config.content_dir is not None
    return config.content_dir / job.job_id / f"{name}.dlpk"


async def publish(store: Store, config: Config, job: Job, event: dict[str, Any]) -> Job:
    """Publish the package named by a child's `result` event. Raises ItemExists, FileNotFoundError, ..."""
    request = TrainingRequest.from_json_dict(job.spec)
    output, name = request.output, request.output.name
    package = Path(str(event.get("package") or ""))
    if not package.is_file():
        raise FileNotFoundError(texts.package_missing(str(package)))
    finished = [(MessageType.INFORMATIVE, texts.TRAINING_FINISHED)]
    if output.kind == "uri":
        assert output.path is not None
        atomic_copy(package, Path(output.path) / f"{name}.dlpk")
        done, _, _ = await store.publish_job(job.job_id, result={"uri": output.package_uri}, messages=[
            *finished, (MessageType.INFORMATIVE, texts.package_written(output.package_uri))])
        return done
    dest = content_path(config, job, name)
    size = atomic_copy(package, dest)
    overwrite = request.overwrite_model
    existing = await store.find_item(job.owner, name)
    item = Item(id=new_item_id(), owner=job.owner, title=name, name=f"{name}.dlpk", folder_id=output.folder_id,
                size=size, created_ms=now_ms(), path=str(dest), job_id=job.job_id,
                properties={"modelType": job.model_type, "metrics": event.get("metrics") or {}})
    published = texts.item_published(replaced=existing is not None and overwrite)
    try:
        done, _, replaced = await store.publish_job(
            job.job_id, result={"id": item.id}, item=item, overwrite=overwrite,
            messages=[*finished, (MessageType.INFORMATIVE, published)])
    except BaseException:
        if not (done_job := await store.get_job(job.job_id)) or done_job.result is None:
            with contextlib.suppress(OSError):
                dest.unlink()
        raise
    if replaced is not None and replaced.path != str(dest):
        with contextlib.suppress(OSError):  # the old package is no longer referenced by any item
            Path(replaced.path).unlink()
    return done
