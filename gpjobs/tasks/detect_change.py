"""DetectChangeUsingDeepLearning: a change detection package over a "from" and a "to" raster (one grid) -> a
classified change GeoTIFF, published as an "Image" item or written to a share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpjobs.paths import PathResolver
from gpjobs.tasks.inference import (
    CONTEXT,
    DETECT_CHANGE,
    MODEL,
    MODEL_ARGUMENTS,
    InferenceRequest,
    Problems,
    check_grid,
    first_set,
    output_parameter,
    output_target_parameter,
    parse_common,
    parse_output,
    parse_raster,
)
from gpjobs.tasks.params import GPParameter
from gpjobs.tasks.train import DEFAULT_MAX_ARGUMENTS_BYTES

TASK_NAME = DETECT_CHANGE
DISPLAY_NAME = "Detect Change Using Deep Learning"
DESCRIPTION = "Runs a change detection package on a raster before and a raster after, and publishes the change raster."
HELP_URL = "https://developers.arcgis.com/rest/services-reference/enterprise/detect-change-using-deep-learning-service"

_RASTER = (
    '{"uri": "/rasterStores/<store>/<image>.tif"}: a GeoTIFF on a registered store, on the same grid as '
    "the other raster."
)
INPUT_PARAMETERS = (
    GPParameter("fromRaster", "GPString", "From Raster", "The raster before the change. " + _RASTER, required=True),
    GPParameter("toRaster", "GPString", "To Raster", "The raster after the change. " + _RASTER, required=True),
    output_target_parameter("outputClassifiedRaster", "Output Classified Raster", "the change raster", ".tif"),
    MODEL,
    MODEL_ARGUMENTS,
    CONTEXT,
    # What arcgis.learn.detect_change_using_deep_learning (arcgis 2.4) sends instead of model and
    # outputClassifiedRaster: declared so that its generated function accepts them.
    GPParameter("modelDefinition", "GPString", "Model Definition", "Same as model (the arcgis client's name)."),
    GPParameter(
        "outputClassifiedRasterName",
        "GPString",
        "Output Classified Raster Name",
        "Same as outputClassifiedRaster (the arcgis client's name).",
    ),
)
OUTPUT_PARAMETER = output_parameter("outRaster", "Output Raster", "change raster")
PARAMETERS = (*INPUT_PARAMETERS, OUTPUT_PARAMETER)


def parse_request(
    values: Mapping[str, Any], resolver: PathResolver, *, max_arguments_bytes: int = DEFAULT_MAX_ARGUMENTS_BYTES
) -> InferenceRequest:
    """Check every parameter (ParameterError lists all problems, each naming its parameter)."""
    problems = Problems()
    common = parse_common(
        values,
        resolver,
        problems,
        model_names=("model", "modelDefinition"),
        max_arguments_bytes=max_arguments_bytes,
        modes=False,
    )
    rasters = tuple(
        problems.attempt(parse_raster, name, values.get(name), resolver, separately=False)
        for name in ("fromRaster", "toRaster")
    )
    output_name, output_raw = first_set(values, "outputClassifiedRaster", "outputClassifiedRasterName")
    output = problems.attempt(parse_output, output_name, output_raw, resolver, ".tif")
    if common.context is not None:
        for name, raster in zip(("fromRaster", "toRaster"), rasters):
            if raster is not None:
                problems.attempt(check_grid, name, raster, common.extent, common.cell_size)
    problems.raise_if_any()
    return common.request(TASK_NAME, rasters=rasters, output=output)
