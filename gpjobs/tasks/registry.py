"""Every task of the RasterAnalysisTools GPServer, by name: its parameters, its typed request and its parser.

The web layer lists, describes, routes and parses tasks only through this table, and the scheduler reads a
stored job's request back with `request_from_json`; adding a task is adding its module and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpjobs.tasks import classify_objects, classify_pixels, detect_change, detect_objects, train
from gpjobs.tasks.inference import InferenceRequest
from gpjobs.tasks.params import GPParameter
from gpjobs.tasks.train import TrainingRequest

Request = TrainingRequest | InferenceRequest
TRAIN, INFERENCE = "train", "inference"
DEFAULT_TASK = train.TASK_NAME  # the task of every job stored before tasks were recorded


@dataclass(frozen=True)
class TaskSpec:
    """One GP task: what its resource says, and how a submission becomes its request."""

    name: str
    display_name: str
    description: str
    help_url: str
    inputs: tuple[GPParameter, ...]
    output: GPParameter
    kind: str  # TRAIN | INFERENCE
    parse: Callable[..., Request]  # (values by declared name, resolver, *, max_arguments_bytes) -> request

    @property
    def parameters(self) -> tuple[GPParameter, ...]:
        return (*self.inputs, self.output)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.inputs)

    def input_parameter(self, name: str) -> GPParameter | None:
        return next((p for p in self.inputs if p.name == name), None)

    def task_json(self) -> dict[str, Any]:
        """The task resource: every input and the output, each with every key the clients index."""
        return {
            "name": self.name,
            "displayName": self.display_name,
            "description": self.description,
            "category": "",
            "helpUrl": self.help_url,
            "executionType": "esriExecutionTypeAsynchronous",
            "parameters": [p.json() for p in self.parameters],
        }

    def request_from_json(self, data: Mapping[str, Any]) -> Request:
        """A stored job spec as this task's request (ValueError when it is not one this version wrote)."""
        if self.kind == TRAIN:
            return TrainingRequest.from_json_dict(data)
        return InferenceRequest.from_json_dict(data)


def _inference(module: Any) -> TaskSpec:
    return TaskSpec(
        module.TASK_NAME,
        module.DISPLAY_NAME,
        module.DESCRIPTION,
        module.HELP_URL,
        module.INPUT_PARAMETERS,
        module.OUTPUT_PARAMETER,
        INFERENCE,
        module.parse_request,
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            train.TASK_NAME,
            "Train Deep Learning Model",
            "Trains a deep learning model on the output of Export Training Data For Deep Learning and publishes it "
            "as a Deep Learning Package (.dlpk).",
            "https://developers.arcgis.com/rest/services-reference/enterprise/train-deep-learning-model",
            train.INPUT_PARAMETERS,
            train.OUTPUT_PARAMETER,
            TRAIN,
            train.parse_training_request,
        ),
        _inference(classify_pixels),
        _inference(detect_objects),
        _inference(classify_objects),
        _inference(detect_change),
    )
}


def task_named(name: str | None) -> TaskSpec:
    """The task of a job (None: a job stored before tasks were recorded, which trains); KeyError when unknown."""
    return TASKS[name or DEFAULT_TASK]
