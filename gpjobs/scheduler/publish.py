"""Publishing a finished model: the .dlpk goes into place atomically first, then ONE transaction inserts
the item and marks the job Succeeded. Repeating a publish is harmless (file name from the job id,
item unique per job).

The destination folder is opened from its store's root one folder at a time without following links
(`paths.open_store_folder`) and the package is written relative to that folder: a file-share output folder
swapped for a symbolic link while the job trained cannot make the server write outside the share.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from gpjobs import messages as texts
from gpjobs.config import Config
from gpjobs.domain import Item, Job, MessageType, new_item_id, now_ms
from gpjobs.paths import PathError, StoreRoots, open_store_folder
from gpjobs.store import Store
from gpjobs.tasks.train import TrainingRequest

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class OutputRefused(Exception):
    """The output folder is no longer a safe place to write (a link out of its store, a file, no store)."""


def atomic_copy(source: Path, root: Path, dest: Path) -> int:
    """Copy `source` to `dest` (inside the folder tree of `root`) via a temp name, fsync, rename, fsync the
    folder; returns the size. Every step is relative to the destination folder's fd (see the module doc);
    PathError when that folder cannot be reached inside `root` without following a link."""
    folder_fd = open_store_folder(root, dest.parent, create=True)
    tmp = f".{dest.name}.tmp-{os.getpid()}"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder_fd)  # left by an earlier attempt of this process id
        out_fd = os.open(tmp, _NEW_FILE, 0o644, dir_fd=folder_fd)
        try:
            with open(source, "rb") as src, os.fdopen(out_fd, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=folder_fd)
            raise
        os.fsync(folder_fd)
        return os.stat(dest.name, dir_fd=folder_fd, follow_symlinks=False).st_size
    finally:
        os.close(folder_fd)


def content_path(config: Config, job: Job, name: str) -> Path:
    """Where a job's package lives in the content store (derived from the job id: idempotent)."""
    assert config.content_dir is not None
    return config.content_dir / job.job_id / f"{name}.dlpk"


def copy_into_share(config: Config, copies: list[tuple[Path, Path]], uri: str) -> None:
    """Copy each (source, dest) into the registered file share that holds the destination folder (one folder).
    Re-checked now, not only at submit: the share may have been unregistered or the folder replaced since;
    OutputRefused names `uri` and why."""
    folder = copies[0][1].parent
    root = StoreRoots.from_config(config).root_containing(folder)
    try:
        if root is None:
            raise PathError("it is no longer inside a registered file share")
        for source, dest in copies:
            atomic_copy(source, root, dest)
    except PathError as exc:
        raise OutputRefused(texts.output_refused(uri, str(exc))) from None


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
        copy_into_share(config, [(package, Path(output.path) / f"{name}.dlpk")], output.package_uri)
        done, _, _ = await store.publish_job(
            job.job_id,
            result={"uri": output.package_uri},
            messages=[*finished, (MessageType.INFORMATIVE, texts.package_written(output.package_uri))],
        )
        return done
    dest = content_path(config, job, name)
    assert config.content_dir is not None
    size = atomic_copy(package, config.content_dir, dest)
    overwrite = request.overwrite_model
    existing = await store.find_item(job.owner, name)
    item = Item(
        id=new_item_id(),
        owner=job.owner,
        title=name,
        name=f"{name}.dlpk",
        folder_id=output.folder_id,
        size=size,
        created_ms=now_ms(),
        path=str(dest),
        job_id=job.job_id,
        properties={"modelType": job.model_type, "metrics": event.get("metrics") or {}},
    )
    published = texts.item_published(replaced=existing is not None and overwrite)
    try:
        done, _, replaced = await store.publish_job(
            job.job_id,
            result={"id": item.id},
            item=item,
            overwrite=overwrite,
            messages=[*finished, (MessageType.INFORMATIVE, published)],
        )
    except BaseException:
        if not (done_job := await store.get_job(job.job_id)) or done_job.result is None:
            with contextlib.suppress(OSError):
                dest.unlink()
        raise
    if replaced is not None and replaced.path != str(dest):
        with contextlib.suppress(OSError):  # the old package is no longer referenced by any item
            Path(replaced.path).unlink()
    return done
