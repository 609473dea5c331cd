"""DetectObjectsUsingDeepLearning: a package's object detector over a raster -> polygons with the fields its
raster function declares (GeoJSON item, GeoPackage beside it), optionally non-maximum suppressed across tiles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpjobs.parsing import is_unset
from gpjobs.paths import PathResolver
from gpjobs.tasks.inference import (
    CONTEXT,
    DETECT_OBJECTS,
    INPUT_RASTER,
    MODEL,
    MODEL_ARGUMENTS,
    PROCESS_ALL_RASTER_ITEMS,
    PROCESSING_MODE,
    InferenceRequest,
    NmsOptions,
    Problems,
    check_grid,
    output_parameter,
    output_target_parameter,
    parse_common,
    parse_output,
    parse_raster,
)
from gpjobs.tasks.params import GPParameter
from gpjobs.tasks.train import DEFAULT_MAX_ARGUMENTS_BYTES

TASK_NAME = DETECT_OBJECTS
DISPLAY_NAME = "Detect Objects Using Deep Learning"
DESCRIPTION = (
    "Runs a deep learning package's object detector over a raster and publishes the detected objects "
    "as polygons (GeoJSON, with a GeoPackage beside it)."
)
HELP_URL = "https://developers.arcgis.com/rest/services-reference/enterprise/detect-objects-using-deep-learning"

RUN_NMS = GPParameter(
    "runNMS",
    "GPBoolean",
    "Non Maximum Suppression",
    "Remove the weaker of two objects of one class that overlap (across tiles too).",
    default=False,
)
CONFIDENCE_SCORE_FIELD = GPParameter(
    "confidenceScoreField",
    "GPString",
    "Confidence Score Field",
    "runNMS: the field that holds the scores.",
    default="Confidence",
)
CLASS_VALUE_FIELD = GPParameter(
    "classValueField",
    "GPString",
    "Class Value Field",
    "runNMS: the field that holds the class; empty: ClassValue or Value when present, "
    "else every object is of one class.",
)
MAX_OVERLAP_RATIO = GPParameter(
    "maxOverlapRatio",
    "GPDouble",
    "Max Overlap Ratio",
    "runNMS: intersection over union (of the objects' envelopes) above which the weaker object is removed.",
    default=0.0,
    minimum=0,
    maximum=1,
)
INPUT_PARAMETERS = (
    INPUT_RASTER,
    MODEL,
    MODEL_ARGUMENTS,
    output_target_parameter("outputObjects", "Output Objects", "the detected objects", ".geojson"),
    RUN_NMS,
    CONFIDENCE_SCORE_FIELD,
    CLASS_VALUE_FIELD,
    MAX_OVERLAP_RATIO,
    PROCESSING_MODE,
    PROCESS_ALL_RASTER_ITEMS,
    CONTEXT,
)
OUTPUT_PARAMETER = output_parameter("outObjects", "Output Objects", "detected objects")
PARAMETERS = (*INPUT_PARAMETERS, OUTPUT_PARAMETER)


def parse_nms(values: Mapping[str, Any]) -> NmsOptions | None:
    """The runNMS options (None when runNMS is false)."""
    if not RUN_NMS.parse(values.get("runNMS")):
        return None
    confidence = CONFIDENCE_SCORE_FIELD.parse(values.get("confidenceScoreField")).strip()
    class_field = values.get("classValueField")
    return NmsOptions(
        confidence_field=confidence or "Confidence",
        class_field=None if is_unset(class_field) else str(class_field).strip(),
        max_overlap_ratio=MAX_OVERLAP_RATIO.parse(values.get("maxOverlapRatio")),
    )


def parse_request(
    values: Mapping[str, Any], resolver: PathResolver, *, max_arguments_bytes: int = DEFAULT_MAX_ARGUMENTS_BYTES
) -> InferenceRequest:
    """Check every parameter (ParameterError lists all problems, each naming its parameter)."""
    problems = Problems()
    common = parse_common(values, resolver, problems, max_arguments_bytes=max_arguments_bytes)
    raster = problems.attempt(
        parse_raster, "inputRaster", values.get("inputRaster"), resolver, separately=common.separately
    )
    output = problems.attempt(parse_output, "outputObjects", values.get("outputObjects"), resolver, ".geojson")
    nms = problems.attempt(parse_nms, values)
    if raster is not None and common.context is not None:
        problems.attempt(check_grid, "inputRaster", raster, common.extent, common.cell_size)
    problems.raise_if_any()
    return common.request(TASK_NAME, rasters=(raster,), output=output, nms=nms)
