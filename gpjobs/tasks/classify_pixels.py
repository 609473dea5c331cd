"""ClassifyPixelsUsingDeepLearning: a package's pixel raster function over a raster -> a classified GeoTIFF
(class values, colour map, raster attribute table), published as an "Image" item or written to a share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpjobs.paths import PathResolver
from gpjobs.tasks.inference import (
    CLASSIFY_PIXELS,
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
    parse_output,
    parse_raster,
)
from gpjobs.tasks.train import DEFAULT_MAX_ARGUMENTS_BYTES

TASK_NAME = CLASSIFY_PIXELS
DISPLAY_NAME = "Classify Pixels Using Deep Learning"
DESCRIPTION = (
    "Runs a deep learning package's pixel classifier (or image translator) over a raster and publishes "
    "the classified GeoTIFF."
)
HELP_URL = "https://developers.arcgis.com/rest/services-reference/enterprise/classify-pixels-using-deep-learning"

INPUT_PARAMETERS = (
    INPUT_RASTER,
    MODEL,
    MODEL_ARGUMENTS,
    output_target_parameter("outputClassifiedRaster", "Output Classified Raster", "the classified raster", ".tif"),
    PROCESSING_MODE,
    PROCESS_ALL_RASTER_ITEMS,
    CONTEXT,
)
OUTPUT_PARAMETER = output_parameter("outRaster", "Output Raster", "classified raster")
PARAMETERS = (*INPUT_PARAMETERS, OUTPUT_PARAMETER)


def parse_request(
    values: Mapping[str, Any], resolver: PathResolver, *, max_arguments_bytes: int = DEFAULT_MAX_ARGUMENTS_BYTES
) -> InferenceRequest:
    """Check every parameter (ParameterError lists all problems, each naming its parameter)."""
    problems = Problems()
    common = parse_common(values, resolver, problems, max_arguments_bytes=max_arguments_bytes)
    raster = problems.attempt(
        parse_raster, "inputRaster", values.get("inputRaster"), resolver, separately=common.separately
    )
    output = problems.attempt(
        parse_output, "outputClassifiedRaster", values.get("outputClassifiedRaster"), resolver, ".tif"
    )
    if raster is not None and common.context is not None:
        problems.attempt(check_grid, "inputRaster", raster, common.extent, common.cell_size)
    problems.raise_if_any()
    return common.request(TASK_NAME, rasters=(raster,), output=output)
