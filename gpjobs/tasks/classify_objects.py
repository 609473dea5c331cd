"""ClassifyObjectsUsingDeepLearning: a package's object classifier (or captioner) on the polygons of
`inputFeatures` (or on every chip of the raster) -> the polygons with the fields its raster function declares
(GeoJSON item, GeoPackage beside it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpjobs.parsing import is_unset
from gpjobs.paths import PathResolver
from gpjobs.tasks.inference import (
    CLASSIFY_OBJECTS,
    CONTEXT,
    INPUT_RASTER,
    MODEL,
    MODEL_ARGUMENTS,
    PROCESS_ALL_RASTER_ITEMS,
    PROCESSING_MODE,
    InferenceRequest,
    Problems,
    check_grid,
    output_parameter,
    output_target_parameter,
    parse_common,
    parse_features,
    parse_output,
    parse_raster,
)
from gpjobs.tasks.params import GPParameter
from gpjobs.tasks.train import DEFAULT_MAX_ARGUMENTS_BYTES

TASK_NAME = CLASSIFY_OBJECTS
DISPLAY_NAME = "Classify Objects Using Deep Learning"
DESCRIPTION = (
    "Runs a deep learning package's object classifier on the polygons of a feature layer (or on every "
    "chip of the raster) and publishes them with their class (GeoJSON, with a GeoPackage beside it)."
)
HELP_URL = "https://developers.arcgis.com/rest/services-reference/enterprise/classify-objects-using-deep-learning"

INPUT_PARAMETERS = (
    INPUT_RASTER,
    GPParameter(
        "inputFeatures",
        "GPString",
        "Input Features",
        '{"uri": "/fileShares/<store>/<polygons>.geojson"}: the objects to classify (GeoJSON polygons in the '
        "raster's coordinates); empty: every chip of the raster.",
    ),
    output_target_parameter("outputFeatureClass", "Output Feature Class", "the classified objects", ".geojson"),
    MODEL,
    MODEL_ARGUMENTS,
    GPParameter(
        "classLabelField",
        "GPString",
        "Class Label Field",
        "The name of the output field with the class label (default: the raster function's, Label).",
    ),
    PROCESSING_MODE,
    PROCESS_ALL_RASTER_ITEMS,
    CONTEXT,
)
OUTPUT_PARAMETER = output_parameter("outFeatureClass", "Output Feature Class", "classified objects")
PARAMETERS = (*INPUT_PARAMETERS, OUTPUT_PARAMETER)


def _label_field(raw: Any) -> str | None:
    if is_unset(raw):
        return None
    text = str(raw).strip()
    if not text.replace("_", "").isalnum() or text[0].isdigit() or len(text) > 64:
        raise ValueError(f"classLabelField: '{text}' is not a field name (letters, digits and _, not first a digit)")
    return text


def parse_request(
    values: Mapping[str, Any], resolver: PathResolver, *, max_arguments_bytes: int = DEFAULT_MAX_ARGUMENTS_BYTES
) -> InferenceRequest:
    """Check every parameter (ParameterError lists all problems, each naming its parameter)."""
    problems = Problems()
    common = parse_common(values, resolver, problems, max_arguments_bytes=max_arguments_bytes)
    raster = problems.attempt(
        parse_raster, "inputRaster", values.get("inputRaster"), resolver, separately=common.separately
    )
    features = problems.attempt(parse_features, "inputFeatures", values.get("inputFeatures"), resolver)
    output = problems.attempt(
        parse_output, "outputFeatureClass", values.get("outputFeatureClass"), resolver, ".geojson"
    )
    label = problems.attempt(_label_field, values.get("classLabelField"))
    if raster is not None and common.context is not None:
        problems.attempt(check_grid, "inputRaster", raster, common.extent, common.cell_size)
    if features is not None and common.separately:
        problems.lines.append(
            "inputFeatures: polygons go with one raster; leave processingMode at "
            "PROCESS_AS_MOSAICKED_IMAGE when you give inputFeatures"
        )
    problems.raise_if_any()
    return common.request(TASK_NAME, rasters=(raster,), output=output, features=features, class_label_field=label)
