"""Publishing an inference job's output: its files go into place atomically first (the content store beside the
job's id, or the share folder the user named), then ONE transaction inserts the item (or fills the item the
user named) and marks the job Succeeded. Repeating a publish is harmless (file names from the job id, one item
per job).

A classified raster is an "Image" item holding the GeoTIFF, its raster attribute table (.tif.aux.xml) beside
it as an item resource; features are a "GeoJson" item with the GeoPackage beside it as a resource.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from gpjobs import messages as texts
from gpjobs.config import Config
from gpjobs.domain import (
    ITEM_TYPE_GEOJSON,
    ITEM_TYPE_IMAGE,
    Item,
    Job,
    MessageType,
    new_item_id,
    now_ms,
)
from gpjobs.scheduler.publish import atomic_copy, copy_into_share
from gpjobs.store import Store
from gpjobs.tasks.inference import InferenceRequest, output_uri

INFO = MessageType.INFORMATIVE
ITEM_TYPE_IMAGE_COLLECTION = "Image Collection"  # a ZIP of GeoTIFFs (processingMode PROCESS_ITEMS_SEPARATELY)
TYPE_KEYWORDS = {
    ITEM_TYPE_IMAGE: ["Raster", "GeoTIFF", "Deep Learning", "Analysis Result"],
    ITEM_TYPE_IMAGE_COLLECTION: ["Raster", "GeoTIFF", "Zip", "Deep Learning", "Analysis Result"],
    ITEM_TYPE_GEOJSON: ["Data", "GeoJSON", "GeoPackage", "Deep Learning", "Analysis Result"],
}


def item_type(data: Path) -> str:
    if data.suffix.lower() == ".geojson":
        return ITEM_TYPE_GEOJSON
    return ITEM_TYPE_IMAGE_COLLECTION if data.suffix.lower() == ".zip" else ITEM_TYPE_IMAGE


async def publish_inference(store: Store, config: Config, job: Job, event: dict[str, Any]) -> Job:
    """Publish the files a child's inference `result` event names. Raises ItemExists, ItemNotFound, OSError."""
    request = InferenceRequest.from_json_dict(job.spec)
    output, name = request.output, request.output.name
    data = Path(str(event.get("data") or ""))
    resources = [Path(str(p)) for p in event.get("resources") or []]
    for path in (data, *resources):
        if not path.is_file():
            raise FileNotFoundError(texts.output_missing(str(path)))
    features = int(event["features"]) if request.output_kind == "features" else None
    finished = [(INFO, texts.inference_finished(int(event.get("blocks") or 0), features))]
    target_name = f"{name}{data.suffix}"
    if output.kind == "uri":
        assert output.path is not None
        folder = Path(output.path)
        uri = output_uri(output, data.suffix)
        copy_into_share(
            config,
            [(data, folder / target_name), *((r, folder / _resource_name(r, data, name)) for r in resources)],
            uri,
        )
        done, _, _ = await store.publish_job(
            job.job_id, result={"uri": uri}, messages=[*finished, (INFO, texts.output_written(uri))]
        )
        return done
    assert config.content_dir is not None
    folder = config.content_dir / job.job_id
    size = atomic_copy(data, config.content_dir, folder / target_name)
    names = []
    for resource in resources:
        names.append(_resource_name(resource, data, name))
        atomic_copy(resource, config.content_dir, folder / names[-1])
    kind = item_type(data)
    item = Item(
        id=new_item_id(),
        owner=job.owner,
        title=name,
        name=target_name,
        type=kind,
        type_keywords=list(TYPE_KEYWORDS[kind]),
        tags=["Analysis Result", request.task],
        folder_id=output.folder_id,
        size=size,
        created_ms=now_ms(),
        path=str(folder / target_name),
        job_id=job.job_id,
        snippet=f"{request.task} with {request.model_type}",
        properties={
            "task": request.task,
            "modelType": request.model_type,
            "resources": names,
            "blocks": int(event.get("blocks") or 0),
            **({"features": features} if features is not None else {}),
        },
    )
    try:
        done, _, replaced = await store.publish_job(
            job.job_id,
            result={"id": item.id},
            item=item,
            replace_item_id=output.replace_item_id,
            messages=[*finished, (INFO, texts.output_published(kind, replaced=output.replace_item_id is not None))],
        )
    except BaseException:
        if not (done_job := await store.get_job(job.job_id)) or done_job.result is None:
            for path in (folder / target_name, *(folder / n for n in names)):
                with contextlib.suppress(OSError):
                    path.unlink()
        raise
    if replaced is not None and replaced.path and replaced.path != item.path:
        _remove_files(replaced)
    return done


def _resource_name(resource: Path, data: Path, name: str) -> str:
    """A resource's name beside the published file: `<name>` + what follows the data file's stem."""
    return name + resource.name[len(data.stem) :] if resource.name.startswith(data.stem) else resource.name


def _remove_files(item: Item) -> None:
    """The replaced item's file and its resources (no item references them any more)."""
    path = Path(item.path)
    for name in [path.name, *(item.properties.get("resources") or [])]:
        with contextlib.suppress(OSError):
            (path.parent / Path(str(name)).name).unlink()
