"""submitJob's parameters as real clients send them: any spelling of the names, "" for unset, and the
checks that need the server (the store's items, the configured devices).

The parameters themselves and their parsing live in the task modules (`gpjobs.tasks.registry`); this module
only adapts a submitted form to them and adds what only the server can know.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gpjobs.domain import (
    ITEM_TYPE_DLPK,
    ITEM_TYPE_FEATURE_SERVICE,
    ITEM_TYPE_GEOJSON,
    ITEM_TYPE_IMAGE,
    ITEM_TYPE_IMAGE_SERVICE,
)
from gpjobs.paths import StoreRoots
from gpjobs.tasks.inference import OUTPUT_TARGET_PARAMETERS, InferenceRequest, check_model_fits
from gpjobs.tasks.params import ParameterError, collect_inputs
from gpjobs.tasks.registry import DEFAULT_TASK, TASKS, Request, TaskSpec
from gpjobs.tasks.train import TrainingRequest

# The item types an inference output may fill or replace, by output kind.
OUTPUT_ITEM_TYPES = {
    "raster": (ITEM_TYPE_IMAGE, ITEM_TYPE_IMAGE_SERVICE),
    "features": (ITEM_TYPE_GEOJSON, ITEM_TYPE_FEATURE_SERVICE),
}


@dataclass(frozen=True)
class Submission:
    """A parsed submission: the raw inputs (served back by jobs/<id>/inputs) and the typed request."""

    inputs: dict[str, Any]
    request: Request


def parse_submit(
    params: Mapping[str, Any], roots: StoreRoots, *, max_arguments_bytes: int, task: TaskSpec | None = None
) -> Submission:
    """Check every submitted parameter of `task` (default TrainDeepLearningModel); ParameterError lists all
    problems at once."""
    task = task or TASKS[DEFAULT_TASK]
    inputs = collect_inputs(params, task.inputs)
    request = task.parse(inputs, roots, max_arguments_bytes=max_arguments_bytes)
    return Submission(inputs=inputs, request=request)


def served_value(raw: Any) -> Any:
    """An input value as served by jobs/<id>/inputs/<name>: exactly what was submitted ("" when not sent)."""
    return "" if raw is None else raw


def check_devices(request: Request, devices: list[str]) -> None:
    """`context.processorType` must name a kind of slot this server has (ParameterError otherwise)."""
    wanted = request.context.processor_type
    if wanted is None:
        return
    kinds = {"GPU" if d.startswith("cuda") else "CPU" for d in devices}
    if wanted not in kinds:
        raise ParameterError(
            [
                f"context: processorType {wanted} was requested, but this server has no "
                f"{wanted} slot (devices: {', '.join(devices)}); use processorType "
                f"{' or '.join(sorted(kinds))}, leave it unset, or add a {wanted} device to the "
                "server's `devices` setting"
            ]
        )


async def check_with_store(request: Request, store: Any, principal: Any) -> Request:
    """The checks a request needs the store for (items: the model, the output, the pretrained package)."""
    if isinstance(request, InferenceRequest):
        return await check_inference_with_store(request, store, principal)
    return await check_training_with_store(request, store, principal)


async def check_training_with_store(request: TrainingRequest, store: Any, principal: Any) -> TrainingRequest:
    """Checks that need the store: an item name clash without overwrite, and pretrained item access.

    Returns the request with the item to replace and the pretrained package's file filled in. A
    pretrained item the caller may not read gets the same answer as a missing one.
    """
    problems: list[str] = []
    output, pretrained = request.output, request.pretrained
    if output.kind == "item":
        existing = await store.find_item(principal.username, output.name)
        if existing is not None:
            if request.overwrite_model:
                output = replace(output, replace_item_id=existing.id)
            else:
                problems.append(
                    f"output_name: you already have a model named '{output.name}' (item "
                    f"{existing.id}); set overwrite_model to true to replace it, or choose another name"
                )
    if pretrained is not None and pretrained.item_id:
        item = await store.get_item(pretrained.item_id)
        if item is None or not principal.can_see(item.owner):
            problems.append(f"pretrained_model: item {pretrained.item_id} does not exist or is not accessible to you")
        elif not item.path or not os.path.isfile(item.path):
            problems.append(f"pretrained_model: item {item.id} has no package file on this server")
        else:
            pretrained = replace(pretrained, path=item.path)
    if problems:
        raise ParameterError(problems)
    return request.replace(output=output, pretrained=pretrained)


async def check_inference_with_store(request: InferenceRequest, store: Any, principal: Any) -> InferenceRequest:
    """The model item (exists, readable by the caller, a .dlpk) and the output item (a name not taken, or the
    caller's item of a fitting type to fill); then, once the package file is known, that it fits task and
    rasters. A model item the caller may not read gets the same answer as a missing one."""
    problems: list[str] = []
    model, output = request.model, request.output
    if model.item_id:
        item = await store.get_item(model.item_id)
        if item is None or not principal.can_see(item.owner):
            problems.append(f"model: item {model.item_id} does not exist or is not accessible to you")
        elif item.type != ITEM_TYPE_DLPK:
            problems.append(
                f"model: item {item.id} ('{item.title}') is a {item.type} item, not a Deep Learning "
                "Package (.dlpk); give the item of a trained model"
            )
        elif not item.path or not os.path.isfile(item.path):
            problems.append(f"model: item {item.id} has no package file on this server")
        else:
            model = replace(model, path=item.path)
    if output.kind == "item":
        output_problem, output = await _output_item(request, store, principal)
        if output_problem:
            problems.append(output_problem)
    if problems:
        raise ParameterError(problems)
    request = request.replace(model=model, output=output)
    if request.model_type:  # a package on a share: checked while parsing
        return request
    return await asyncio.to_thread(check_model_fits, request)  # reads the package and the rasters


async def _output_item(request: InferenceRequest, store: Any, principal: Any) -> tuple[str | None, Any]:
    """(problem or None, the output target with the item to fill and its title)."""
    output, name = request.output, OUTPUT_TARGET_PARAMETERS[request.task]
    allowed = OUTPUT_ITEM_TYPES[request.output_kind]
    if output.replace_item_id:
        item = await store.get_item(output.replace_item_id)
        if item is None or item.owner != principal.username:
            return f"{name}: item {output.replace_item_id} does not exist or is not yours to fill", output
        if item.type not in allowed:
            return (
                f"{name}: item {item.id} ('{item.title}') is a {item.type} item; this task fills "
                f"{' or '.join(allowed)} items"
            ), output
        return None, replace(output, name=output.name or item.title, folder_id=output.folder_id or item.folder_id)
    existing = await store.find_item(principal.username, output.name, allowed[0])
    if existing is not None:
        return (
            f"{name}: you already have an {allowed[0]} item named '{output.name}' (item {existing.id}); give "
            f'{{"itemProperties": {{"itemId": "{existing.id}"}}}} to replace it, or choose another name'
        ), output
    return None, output
