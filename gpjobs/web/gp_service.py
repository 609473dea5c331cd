"""Service directory, the RasterAnalysisTools GPServer and its task descriptions (protocol.md §2.1-2.2).

The tasks come from `gpjobs.tasks.registry`: TrainDeepLearningModel and the inference tasks.
"""

from __future__ import annotations

from typing import Any

from gpjobs.tasks.registry import DEFAULT_TASK, TASKS, TaskSpec

# Below 12.0 on purpose: at >= 12.0 the arcgis client passes six more keywords (data_augmentation, ...)
# that TrainDeepLearningModel does not declare (protocol.md §2.1).
CURRENT_VERSION = 11.3
SERVICE_FOLDER = "System"
SERVICE_NAME = "RasterAnalysisTools"
SERVICES_ROOT = "/arcgis/rest/services"
SERVICE_PATH = f"{SERVICES_ROOT}/{SERVICE_FOLDER}/{SERVICE_NAME}/GPServer"
TASK_PATH = f"{SERVICE_PATH}/{DEFAULT_TASK}"  # TrainDeepLearningModel's resource


def task_path(task: str) -> str:
    """A task's resource path (its jobs are under `<path>/jobs/<id>`)."""
    return f"{SERVICE_PATH}/{task}"


def services_root() -> dict[str, Any]:
    """`/arcgis/rest/services`: the catalog root with the System folder."""
    return {"currentVersion": CURRENT_VERSION, "folders": [SERVICE_FOLDER], "services": []}


def services_folder() -> dict[str, Any]:
    """`/arcgis/rest/services/System`: the one GP service this server hosts."""
    return {
        "currentVersion": CURRENT_VERSION,
        "folders": [],
        "services": [{"name": f"{SERVICE_FOLDER}/{SERVICE_NAME}", "type": "GPServer"}],
    }


def service_description() -> dict[str, Any]:
    """The GPServer resource: every key the clients read (tasks, executionType, resultMapServerName)."""
    return {
        "currentVersion": CURRENT_VERSION,
        "serviceDescription": "Raster analysis tools: train deep learning models on exported training data, and run "
        "them over rasters (classify pixels, detect objects, classify objects, detect change).",
        "tasks": list(TASKS),
        "executionType": "esriExecutionTypeAsynchronous",
        "resultMapServerName": "",
        "maximumRecords": 1000,
        "capabilities": "",
    }


def task_description(task: TaskSpec | None = None) -> dict[str, Any]:
    """A task resource (default TrainDeepLearningModel): every input and the output, with every key clients index."""
    return (task or TASKS[DEFAULT_TASK]).task_json()
