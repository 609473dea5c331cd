"""What a job's work folder keeps once the job has ended (`work_retention`), so that disk does not only grow.

While a job can still run, its folder holds what resuming needs (spec, checkpoint) and debugging needs (the
child logs). Once it is finished, "logs" keeps the spec and the logs and deletes the checkpoint and the
package copy (the published package lives in the content store or the file share), "none" deletes the
folder, "all" keeps everything. Jobs are tidied when their run ends, when a queued job is cancelled, and at
boot (whatever a crash or an earlier version left).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import structlog

from gpjobs.config import Config
from gpjobs.domain import is_job_id
from gpjobs.scheduler.child_input import work_dir
from gpjobs.store import Store

log = structlog.get_logger("gpjobs.scheduler")
OUTPUT = "output"  # the child's model folder and .dlpk (JobSpec.output_dir)
CHECKPOINT_PREFIXES = ("checkpoint", ".checkpoint")  # checkpoint.pt and its atomic-write temp files


def _dropped(folder: Path, retention: str) -> list[Path]:
    """The entries of a finished job's folder that `retention` does not keep."""
    if retention == "all" or not folder.is_dir():
        return []
    if retention == "none":
        return [folder]
    with os.scandir(folder) as entries:
        return [
            Path(e.path)
            for e in entries
            if e.name == OUTPUT or (e.name.startswith(CHECKPOINT_PREFIXES) and not e.is_dir(follow_symlinks=False))
        ]


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir() or p.is_symlink())


def tidy_work_dir(config: Config, job_id: str) -> int:
    """Apply `work_retention` to the folder of a finished job; returns the bytes freed."""
    freed = 0
    for path in _dropped(work_dir(config, job_id), config.work_retention):
        try:
            freed += _size(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:  # a file held open elsewhere must not stop the tidying of the rest
            log.warning("work file not deleted", job_id=job_id, path=str(path), error=str(exc))
    return freed


async def tidy_finished(store: Store, config: Config, job_id: str) -> None:
    """Tidy the job's folder if the job has ended (otherwise its checkpoint may still be needed)."""
    job = await store.get_job(job_id)
    if job is not None and job.is_terminal:
        freed = await asyncio.to_thread(tidy_work_dir, config, job_id)
        if freed:
            log.info("work folder tidied", job_id=job_id, retention=config.work_retention, freed_bytes=freed)


async def tidy_all_finished(store: Store, config: Config) -> int:
    """At boot: tidy every finished job's folder that still holds what retention drops; returns how many."""
    if config.work_retention == "all" or config.jobs_dir is None or not config.jobs_dir.is_dir():
        return 0

    def untidy() -> list[str]:
        names = [e.name for e in os.scandir(config.jobs_dir) if e.is_dir(follow_symlinks=False) and is_job_id(e.name)]
        return [n for n in names if _dropped(work_dir(config, n), config.work_retention)]

    tidied = 0
    for job_id in await asyncio.to_thread(untidy):
        job = await store.get_job(job_id)
        if job is None or job.is_terminal:  # None: deleted or pruned, its folder left behind
            await asyncio.to_thread(tidy_work_dir, config, job_id)
            tidied += 1
    return tidied
