"""Service directory, GPServer service and TrainDeepLearningModel task descriptions (protocol.md §2.1-2.2)."""

from __future__ import annotations

from typing import Any

from gpjobs.tasks.train import PARAMETERS, TASK_NAME

# Below 12.0 on purpose: at >= 12.0 the arcgis client passes six more keywords (data_augmentation, ...)
# that this task does not declare (protocol.md §2.1).
CURRENT_VERSION = 11.3
SERVICE_FOLDER = "System"
SERVICE_NAME = "RasterAnalysisTools"
SERVICES_ROOT = "/arcgis/rest/services"
SERVICE_PATH = f"{SERVICES_ROOT}/{SERVICE_FOLDER}/{SERVICE_NAME}/GPServer"
TASK_PATH = f"{SERVICE_PATH}/{TASK_NAME}"
HELP_URL = "https://developers.arcgis.com/rest/services-reference/enterprise/train-deep-learning-model"


def services_root() -> dict[str, Any]:
    """`/arcgis/rest/services`: the catalog root with the System folder."""
    return {"currentVersion": CURRENT_VERSION, "folders": [SERVICE_FOLDER], "services": []}


def services_folder() -> dict[str, Any]:
    """`/arcgis/rest/services/System`: the one GP service this server hosts."""
    return {"currentVersion": CURRENT_VERSION, "folders": [],
            "services": [{"name": f"{SERVICE_FOLDER}/{SERVICE_NAME}", "type": "GPServer"}]}


def service_description() -> dict[str, Any]:
    """The GPServer resource: every key the clients read (tasks, executionType, resultMapServerName)."""
    return {
        "currentVersion": CURRENT_VERSION,
        "serviceDescription": "Raster analysis tools: train deep learning models on exported training data.",
        "tasks": [TASK_NAME],
        "executionType": "esriExecutionTypeAsynchronous",
        "resultMapServerName": "",
        "maximumRecords": 1000,
        "capabilities": "",
    }


def task_description() -> dict[str, Any]:
    """The task resource: all 14 inputs and the `out_item` output, each with every key clients index."""
    return {
        "name": TASK_NAME,
        "displayName": "Train Deep Learning Model",
        "description": "Trains a deep learning model on the output of Export Training Data For Deep Learning "
                       "and publishes it as a Deep Learning Package (.dlpk).",
        "category": "",
        "helpUrl": HELP_URL,
        "executionType": "esriExecutionTypeAsynchronous",
        "parameters": [p.json() for p in PARAMETERS],
    }
