"""submitJob's parameters as real clients send them: any spelling of the names, "" for unset, and the
checks that need the server (the store's items, the configured devices).

The parameters themselves and their parsing live in `gpjobs.tasks.train`; this module only adapts a
submitted form to it and adds what only the server can know.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gpjobs.paths import StoreRoots
from gpjobs.tasks.params import ParameterError, collect_inputs
from gpjobs.tasks.train import INPUT_PARAMETERS, TrainingRequest, parse_training_request


@dataclass(frozen=True)
class Submission:
    """A parsed submission: the raw inputs (served back by jobs/<id>/inputs) and the typed request."""

    inputs: dict[str, Any]
    request: TrainingRequest


def parse_submit(params: Mapping[str, Any], roots: StoreRoots, *, max_arguments_bytes: int) -> Submission:
    """Check every submitted parameter; ParameterError lists all problems at once."""
    inputs = collect_inputs(params, INPUT_PARAMETERS)
    request = parse_training_request(inputs, roots, max_arguments_bytes=max_arguments_bytes)
    return Submission(inputs=inputs, request=request)


def served_value(raw: Any) -> Any:
    """An input value as served by jobs/<id>/inputs/<name>: exactly what was submitted ("" when not sent)."""
    return "" if raw is None else raw


def check_devices(request: TrainingRequest, devices: list[str]) -> None:
    """`context.processorType` must name a kind of slot this server has (ParameterError otherwise)."""
    wanted = request.context.processor_type
    if wanted is None:
        return
    kinds = {"GPU" if d.startswith("cuda") else "CPU" for d in devices}
    if wanted not in kinds:
        raise ParameterError([f"context: processorType {wanted} was requested, but this server has no "
                              f"{wanted} slot (devices: {', '.join(devices)}); use processorType "
                              f"{' or '.join(sorted(kinds))}, leave it unset, or add a {wanted} device to the "
                              "server's `devices` setting"])


async def check_with_store(request: TrainingRequest, store: Any, principal: Any) -> TrainingRequest:
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
                problems.append(f"output_name: you already have a model named '{output.name}' (item "
                                f"{existing.id}); set overwrite_model to true to replace it, or choose another name")
    if pretrained is not None and pretrained.item_id:
        item = await store.get_item(pretrained.item_id)
        if item is None or not principal.can_see(item.owner):
            problems.append(f"pretrained_model: item {pretrained.item_id} does not exist or is not "
                            "accessible to you")
        elif not item.path or not os.path.isfile(item.path):
            problems.append(f"pretrained_model: item {item.id} has no package file on this server")
        else:
            pretrained = replace(pretrained, path=item.path)
    if problems:
        raise ParameterError(problems)
    return request.replace(output=output, pretrained=pretrained)
