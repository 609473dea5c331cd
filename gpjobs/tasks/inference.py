"""The four inference tasks' typed request and the parsing they share.

Each task module (classify_pixels.py, detect_objects.py, classify_objects.py, detect_change.py) declares its
parameters with Esri's names and builds one frozen `InferenceRequest` with the helpers below. The server stores
it as the job's spec and the child runs it (gpjobs/inference/job.py). What can be known at submit is checked
here: the rasters exist and are GeoTIFFs, the model is a .dlpk whose raster function fits the task and whose
bands and pixel type fit the rasters, the extent overlaps them, the features have polygons.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gpjobs.inference.grid import Extent, GridError, describe_raster, target_grid
from gpjobs.inference.package import PackageError, read_package_emd
from gpjobs.parsing import is_unset, parse_bool, parse_float, parse_json_object
from gpjobs.paths import PathError, PathResolver
from gpjobs.tasks.params import OUTPUT, GPParameter, ParameterError
from gpjobs.tasks.train import (
    DEFAULT_MAX_ARGUMENTS_BYTES,
    Context,
    OutputTarget,
    check_name,
    parse_arguments_value,
    parse_context,
)

CLASSIFY_PIXELS = "ClassifyPixelsUsingDeepLearning"
DETECT_OBJECTS = "DetectObjectsUsingDeepLearning"
CLASSIFY_OBJECTS = "ClassifyObjectsUsingDeepLearning"
DETECT_CHANGE = "DetectChangeUsingDeepLearning"
TASKS = (CLASSIFY_PIXELS, DETECT_OBJECTS, CLASSIFY_OBJECTS, DETECT_CHANGE)

# A package's raster function (the .emd's InferenceFunction) -> the tasks that can run it.
PRF_TASKS: dict[str, tuple[str, ...]] = {
    "GpjobsPixelClassifier.py": (CLASSIFY_PIXELS,),
    "GpjobsImageTranslator.py": (CLASSIFY_PIXELS,),
    "GpjobsPanopticSegmenter.py": (CLASSIFY_PIXELS, DETECT_OBJECTS),
    "GpjobsObjectDetector.py": (DETECT_OBJECTS,),
    "GpjobsObjectClassifier.py": (CLASSIFY_OBJECTS,),
    "GpjobsImageCaptioner.py": (CLASSIFY_OBJECTS,),
    "GpjobsChangeDetector.py": (DETECT_CHANGE,),
}
FEATURE_TASKS = frozenset({DETECT_OBJECTS, CLASSIFY_OBJECTS})
# The parameter that names each task's output (messages about the output item name it).
OUTPUT_TARGET_PARAMETERS = {
    CLASSIFY_PIXELS: "outputClassifiedRaster",
    DETECT_OBJECTS: "outputObjects",
    CLASSIFY_OBJECTS: "outputFeatureClass",
    DETECT_CHANGE: "outputClassifiedRaster",
}
MOSAICKED, SEPARATELY = "PROCESS_AS_MOSAICKED_IMAGE", "PROCESS_ITEMS_SEPARATELY"
PROCESSING_MODES = (MOSAICKED, SEPARATELY)
RASTER_SUFFIXES = (".tif", ".tiff")
FEATURE_SUFFIXES = (".geojson", ".json")
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_ITEM_URL = re.compile(r"/items/([0-9a-fA-F]{32})(?:/|$|\?)")
_STORE_MARKERS = ("/fileshares/", "/rasterstores/", "/cloudstores/", "\\\\", "//")


# --- parameters every inference task declares (each task module lists them with its own) ---------------

INPUT_RASTER = GPParameter(
    "inputRaster",
    "GPString",
    "Input Raster",
    '{"uri": "/rasterStores/<store>/<image>.tif"} (or /fileShares/...): a GeoTIFF on a registered store; with '
    f"processingMode {SEPARATELY}, a folder of GeoTIFFs.",
    required=True,
)
MODEL = GPParameter(
    "model",
    "GPString",
    "Model",
    '{"itemId": "<id>"} of a Deep Learning Package item, its item URL, or {"uri": "/fileShares/<store>/<m>.dlpk"}.',
    required=True,
)
MODEL_ARGUMENTS = GPParameter(
    "modelArguments",
    "GPString",
    "Model Arguments",
    'The raster function\'s arguments, e.g. {"padding": "16", "batch_size": "4"}; unset ones keep the model\'s '
    "defaults.",
)
PROCESSING_MODE = GPParameter(
    "processingMode",
    "GPString",
    "Processing Mode",
    f"{MOSAICKED}: one raster; {SEPARATELY}: every GeoTIFF of a folder on its own.",
    default=MOSAICKED,
    choices=PROCESSING_MODES,
)
PROCESS_ALL_RASTER_ITEMS = GPParameter(
    "processAllRasterItems",
    "GPBoolean",
    "Process All Raster Items",
    f"true is processingMode {SEPARATELY} (the name the arcgis Python client and Esri's own service use).",
    default=False,
)
CONTEXT = GPParameter(
    "context",
    "GPString",
    "Context",
    'Environment settings: {"processorType": "CPU" | "GPU", "extent": {"xmin", "ymin", "xmax", "ymax", '
    '"spatialReference": {"wkid"}}, "cellSize": <map units>}.',
)


def output_parameter(name: str, display: str, what: str) -> GPParameter:
    """A task's result: an item reference {"itemId"} (or {"uri"} for a file output), as a JSON value."""
    return GPParameter(
        name, "GPString", display, f'The {what}: {{"itemId": "<id>"}} or {{"uri": "..."}}.', direction=OUTPUT
    )


def output_target_parameter(name: str, display: str, what: str, suffix: str) -> GPParameter:
    return GPParameter(
        name,
        "GPString",
        display,
        f'{{"name": "<title>"}} (optionally "folderId") publishes {what} as an item; {{"serviceProperties": '
        '{"name"}, "itemProperties": {"itemId": "<id>"}} fills (replaces) an item you own; {"uri": '
        f'"/fileShares/<store>/<folder>/<name>{suffix}"}} writes a file to a share.',
        required=True,
    )


# --- the typed request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RasterInput:
    """An input raster as the user named it, and its GeoTIFF file(s) here (a folder gives several)."""

    alias: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class ModelRef:
    """The .dlpk to run: a portal item (its file is filled in once the store is checked) or a file."""

    item_id: str | None = None
    path: str | None = None
    alias: str | None = None

    def describe(self) -> str:
        return f"item {self.item_id}" if self.item_id else f"'{self.alias}'"


@dataclass(frozen=True)
class FeatureInput:
    """Classify Objects' polygons: a GeoJSON file in the raster's coordinates."""

    alias: str
    path: str


@dataclass(frozen=True)
class NmsOptions:
    """runNMS: drop the weaker of two features of one class that overlap more than `max_overlap_ratio`."""

    confidence_field: str
    class_field: str | None  # None: ClassValue / Value when present, else one class
    max_overlap_ratio: float


@dataclass(frozen=True)
class InferenceRequest:
    """One validated inference submission (any of the four tasks)."""

    task: str
    model: ModelRef
    rasters: tuple[RasterInput, ...]  # change detection: (fromRaster, toRaster)
    output: OutputTarget
    arguments: Mapping[str, str]  # the model arguments, as strings (ArcGIS passes them so)
    context: Context
    extent: Extent | None = None
    cell_size: float | None = None
    process_separately: bool = False
    features: FeatureInput | None = None
    nms: NmsOptions | None = None
    class_label_field: str | None = None
    model_type: str = ""  # the package's model type, known once the package is read
    inference_function: str = ""  # the package's raster function
    notes: tuple[str, ...] = ()

    @property
    def output_kind(self) -> str:
        """ "features" (Detect / Classify Objects) or "raster"."""
        return "features" if self.task in FEATURE_TASKS else "raster"

    @property
    def output_suffix(self) -> str:
        return ".geojson" if self.output_kind == "features" else ".tif"

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["arguments"] = dict(self.arguments)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> InferenceRequest:
        """The request as stored (ValueError when the stored form is not one this version wrote)."""
        try:
            context = dict(data["context"])
            return cls(
                task=data["task"],
                model=ModelRef(**data["model"]),
                rasters=tuple(RasterInput(r["alias"], tuple(r["files"])) for r in data["rasters"]),
                output=OutputTarget(**data["output"]),
                arguments=dict(data["arguments"]),
                context=Context(context.get("processor_type"), dict(context.get("values") or {})),
                extent=Extent(**data["extent"]) if data.get("extent") else None,
                cell_size=data.get("cell_size"),
                process_separately=bool(data.get("process_separately")),
                features=FeatureInput(**data["features"]) if data.get("features") else None,
                nms=NmsOptions(**data["nms"]) if data.get("nms") else None,
                class_label_field=data.get("class_label_field"),
                model_type=data.get("model_type", ""),
                inference_function=data.get("inference_function", ""),
                notes=tuple(data.get("notes") or ()),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the stored inference request is incomplete or of another version ({exc})") from None

    def replace(self, **changes: Any) -> InferenceRequest:
        return replace(self, **changes)


# --- parsing helpers -------------------------------------------------------------------------------


class Problems:
    """Collects one line per problem (each naming its parameter) so that a submit reports them all at once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def attempt(self, parse: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return parse(*args, **kwargs)
        except (ValueError, PathError) as exc:  # GridError and PackageError are ValueErrors
            self.lines.append(str(exc))
            return None

    def raise_if_any(self) -> None:
        if self.lines:
            raise ParameterError(self.lines)


def first_set(values: Mapping[str, Any], *names: str) -> tuple[str, Any]:
    """The first of `names` with a value (Esri's name first, then what a client sends instead); (names[0], None)."""
    for name in names:
        if not is_unset(values.get(name)):
            return name, values[name]
    return names[0], None


def _object(name: str, raw: Any) -> dict[str, Any] | None:
    try:
        return parse_json_object(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _uri_of(name: str, raw: Any, what: str) -> str:
    """The path in a `{"uri"}` object or plain text; other forms (urls, items) get an error saying what works."""
    obj = _object(name, raw)
    if obj is None:
        text = str(raw).strip()
        if text.lower().startswith(("http://", "https://")):
            raise ValueError(
                f"{name}: '{text}' is a URL; this server reads {what} from its registered stores: "
                f'use {{"uri": "/rasterStores/<store>/<path>"}} or /fileShares/<store>/<path>'
            )
        return text
    if isinstance(obj.get("uri"), str):
        return obj["uri"]
    keys = ", ".join(sorted(obj)) or "none"
    raise ValueError(
        f'{name}: expected {{"uri": "/rasterStores/<store>/<path>"}} naming {what} on a registered '
        f"store (image services and portal items are not read here); got keys {keys}"
    )


def parse_raster(name: str, raw: Any, resolver: PathResolver, *, separately: bool) -> RasterInput:
    """A GeoTIFF on a registered store, or (PROCESS_ITEMS_SEPARATELY) a folder of them."""
    if is_unset(raw):
        raise ValueError(
            f'{name}: required; use {{"uri": "/rasterStores/<store>/<image>.tif"}} '
            f"(registered stores: {resolver.describe()})"
        )
    try:
        resolved = resolver.resolve(_uri_of(name, raw, "rasters"))
    except PathError as exc:
        raise ValueError(f"{name}: {exc}") from None
    local = resolved.local
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
        if not separately:
            raise ValueError(
                f"{name}: '{resolved.alias}' is a folder; name one GeoTIFF, or set processingMode "
                f"to {SEPARATELY} to process every GeoTIFF in it separately"
            )
        if not files:
            raise ValueError(f"{name}: the folder '{resolved.alias}' holds no GeoTIFF (.tif) files")
    elif local.is_file():
        if local.suffix.lower() not in RASTER_SUFFIXES:
            raise ValueError(
                f"{name}: '{resolved.alias}' is not a GeoTIFF (.tif); convert it, e.g. with gdal_translate -of GTiff"
            )
        files = [local]
    else:
        raise ValueError(f"{name}: '{resolved.alias}' does not exist")
    return RasterInput(resolved.alias, tuple(os.fspath(f) for f in files))


def parse_model(name: str, raw: Any, resolver: PathResolver) -> ModelRef:
    """`model`: {"itemId"}, an item id or item URL, or {"uri"} / a path of a .dlpk on a registered store."""
    if is_unset(raw):
        raise ValueError(
            f'{name}: required; use {{"itemId": "<Deep Learning Package item id>"}} or '
            '{"uri": "/fileShares/<store>/<model>.dlpk"}'
        )
    obj = _object(name, raw)
    if obj is None:
        text = str(raw).strip()
        obj = (
            {"itemId": text}
            if _HEX32.match(text)
            else {"url": text}
            if text.lower().startswith(("http://", "https://"))
            else {"uri": text}
        )
    item_id = obj.get("itemId") or obj.get("id")
    if item_id is None and isinstance(obj.get("url"), str):
        match = _ITEM_URL.search(obj["url"])
        if not match:
            raise ValueError(f"{name}: url '{obj['url']}' is not a .../content/items/<id> item url")
        item_id = match.group(1)
    if item_id is not None:
        if not isinstance(item_id, str) or not _HEX32.match(item_id):
            raise ValueError(f"{name}: '{item_id}' is not an item id (32 hexadecimal characters)")
        return ModelRef(item_id=item_id.lower())
    if not isinstance(obj.get("uri"), str):
        raise ValueError(f'{name}: use {{"itemId": "<id>"}} or {{"uri": "/fileShares/<store>/<model>.dlpk"}}')
    try:
        resolved = resolver.resolve(obj["uri"])
    except PathError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if not resolved.local.is_file():
        raise ValueError(f"{name}: '{resolved.alias}' does not exist")
    if resolved.local.suffix.lower() != ".dlpk":
        raise ValueError(f"{name}: '{resolved.alias}' is not a deep learning package (.dlpk)")
    return ModelRef(path=os.fspath(resolved.local), alias=resolved.alias)


def parse_output(name: str, raw: Any, resolver: PathResolver, suffix: str) -> OutputTarget:
    """The output: an item ({"name"}, {"serviceProperties": {"name"}, "itemProperties": {"itemId", "folderId"}},
    a plain name) or a file on a share ({"uri": "/fileShares/<store>/<folder>/<name>[.tif|.geojson]"})."""
    if is_unset(raw):
        raise ValueError(f'{name}: required; use {{"name": "<output>"}} or {{"uri": "/fileShares/<store>/<file>"}}')
    parsed = _object(name, raw)
    if parsed is None:
        text = str(raw).strip()
        parsed = {"uri": text} if any(m in text.lower() for m in _STORE_MARKERS) else {"name": text}
    obj: dict[str, Any] = parsed
    if "uri" in obj:
        return _output_file(name, obj["uri"], resolver, suffix)
    service: dict[str, Any] = obj["serviceProperties"] if isinstance(obj.get("serviceProperties"), dict) else {}
    item_props: dict[str, Any] = obj["itemProperties"] if isinstance(obj.get("itemProperties"), dict) else {}
    item_id = item_props.get("itemId", obj.get("itemId"))
    title = obj.get("name", service.get("name"))
    if is_unset(item_id):
        item_id = None
    elif not isinstance(item_id, str) or not _HEX32.match(item_id):
        raise ValueError(f"{name}: itemId '{item_id}' is not an item id (32 hexadecimal characters)")
    if not isinstance(title, str) and item_id is None:
        raise ValueError(
            f'{name}: expected {{"name": "<output>"}}, {{"itemProperties": {{"itemId": "<id>"}}}} '
            'or {"uri": "/fileShares/<store>/<file>"}'
        )
    folder_id = item_props.get("folderId", obj.get("folderId"))
    if is_unset(folder_id):
        folder_id = None
    elif not isinstance(folder_id, str) or not _HEX32.match(folder_id):
        raise ValueError(f"{name}: folderId '{folder_id}' is not a folder id (32 hexadecimal characters)")
    try:
        title = check_name(title) if isinstance(title, str) else ""
    except ValueError as exc:
        raise ValueError(str(exc).replace("output_name", name, 1)) from None
    return OutputTarget(
        kind="item",
        name=title,
        folder_id=folder_id.lower() if folder_id else None,
        replace_item_id=item_id.lower() if item_id else None,
    )


def _output_file(name: str, uri: Any, resolver: PathResolver, suffix: str) -> OutputTarget:
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f'{name}: "uri" must be a path like /fileShares/<store>/<folder>/<name>{suffix}')
    try:
        resolved = resolver.resolve(uri)
    except PathError as exc:
        raise ValueError(f"{name}: {exc}") from None
    local, alias = resolved.local, resolved.alias
    if local.suffix.lower() == suffix:
        local, alias = local.with_suffix(""), alias[: -len(suffix)]
    if local.parent == resolved.root.parent or local == resolved.root:
        raise ValueError(f"{name}: name a file inside the store, e.g. /fileShares/<store>/results/<name>{suffix}")
    if not local.parent.is_dir():
        raise ValueError(f"{name}: the folder of '{uri}' does not exist")
    try:
        title = check_name(local.name)
    except ValueError as exc:
        raise ValueError(str(exc).replace("output_name", name, 1)) from None
    return OutputTarget(kind="uri", name=title, alias=alias.rsplit("/", 1)[0], path=os.fspath(local.parent))


def output_uri(output: OutputTarget, suffix: str) -> str:
    """The share path of a file output, as the result reports it."""
    return f"{(output.alias or '').rstrip('/')}/{output.name}{suffix}"


def parse_model_arguments(name: str, raw: Any, max_bytes: int = DEFAULT_MAX_ARGUMENTS_BYTES) -> dict[str, str]:
    """modelArguments as strings by name: a JSON object, or Esri's "name value;name value"."""
    try:
        given = parse_arguments_value(raw, max_bytes)
    except ValueError as exc:
        raise ValueError(f"{name}: {str(exc).removeprefix('arguments: ')}") from None
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in given.items()}


def parse_inference_context(raw: Any) -> tuple[Context, Extent | None, float | None]:
    """`context`: processorType picks the slot; extent (xmin, ymin, xmax, ymax, spatialReference.wkid) and
    cellSize (a positive number, map units) set the processing grid; other keys are kept as given."""
    context = parse_context(raw)
    values = context.values
    extent = None
    if not is_unset(values.get("extent")):
        box = values["extent"]
        if not isinstance(box, Mapping):
            raise ValueError(
                'context: extent must be {"xmin", "ymin", "xmax", "ymax", "spatialReference": {"wkid": <n>}}'
            )
        try:
            xmin, ymin, xmax, ymax = (parse_float(box.get(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise ValueError("context: extent needs numbers xmin, ymin, xmax and ymax") from None
        if not (xmin < xmax and ymin < ymax):
            raise ValueError("context: extent is empty (xmin must be below xmax and ymin below ymax)")
        reference = box.get("spatialReference") or {}
        wkid = reference.get("latestWkid") or reference.get("wkid") if isinstance(reference, Mapping) else None
        if wkid is not None and not (isinstance(wkid, int) or str(wkid).isdigit()):
            raise ValueError(f"context: extent spatialReference wkid '{wkid}' is not a number")
        extent = Extent(xmin, ymin, xmax, ymax, wkid=int(wkid) if wkid is not None else None)
    cell_size = None
    if not is_unset(values.get("cellSize")):
        try:
            cell_size = parse_float(values["cellSize"], 0.0)
        except ValueError:
            raise ValueError(
                f"context: cellSize '{values['cellSize']}' must be a positive number in the raster's map units"
            ) from None
        if cell_size <= 0:
            raise ValueError("context: cellSize must be greater than 0")
    return context, extent, cell_size


def parse_processing_mode(values: Mapping[str, Any]) -> bool:
    """True for PROCESS_ITEMS_SEPARATELY: processingMode says so, or processAllRasterItems is true (what the
    arcgis client and Esri's own service send)."""
    mode = values.get("processingMode")
    separately = False
    if not is_unset(mode):
        text = str(mode).strip().upper()
        if text not in PROCESSING_MODES:
            raise ValueError(f"processingMode: '{mode}' is not allowed; use {' or '.join(PROCESSING_MODES)}")
        separately = text == SEPARATELY
    flag = values.get("processAllRasterItems")
    if not is_unset(flag):
        try:
            separately = separately or parse_bool(flag)
        except ValueError as exc:
            raise ValueError(f"processAllRasterItems: {exc}") from None
    return separately


def parse_features(name: str, raw: Any, resolver: PathResolver) -> FeatureInput | None:
    """Classify Objects' polygons: a GeoJSON FeatureCollection on a registered store; every feature needs a
    Polygon or MultiPolygon geometry."""
    if is_unset(raw):
        return None
    try:
        resolved = resolver.resolve(_uri_of(name, raw, "features"))
    except PathError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if not resolved.local.is_file() or resolved.local.suffix.lower() not in FEATURE_SUFFIXES:
        raise ValueError(f"{name}: '{resolved.alias}' is not a GeoJSON file (.geojson) on a registered store")
    try:
        collection = json.loads(resolved.local.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{name}: '{resolved.alias}' is not readable GeoJSON ({exc})") from None
    features = collection.get("features") if isinstance(collection, dict) else None
    if not isinstance(features, list) or not features:
        raise ValueError(f"{name}: '{resolved.alias}' has no features; give a FeatureCollection of polygons")
    for index, feature in enumerate(features):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        if kind not in ("Polygon", "MultiPolygon") or not (geometry or {}).get("coordinates"):
            what = "no geometry" if not kind else f"a {kind} geometry"
            raise ValueError(
                f"{name}: feature {index} of '{resolved.alias}' has {what}; Classify Objects needs "
                "a polygon around each object"
            )
    return FeatureInput(resolved.alias, os.fspath(resolved.local))


# --- checks that need the package ------------------------------------------------------------------


def check_model_fits(request: InferenceRequest) -> InferenceRequest:
    """The package (its file known) runs on this task and these rasters: a raster function for this task, the
    bands it reads present, the pixel type it was trained on. Returns the request with the model type and raster
    function filled in; ParameterError names `model` or the raster parameter otherwise."""
    assert request.model.path is not None
    where = request.model.describe()
    try:
        emd = read_package_emd(request.model.path)
    except PackageError as exc:
        raise ParameterError([f"model: {where}: {exc}"]) from None
    function = str(emd.get("InferenceFunction") or "")
    ours = emd.get("Gpjobs") or {}
    model_type = str(ours.get("model_type") or emd.get("ModelName") or emd.get("ModelType") or "unknown")
    tasks = PRF_TASKS.get(function)
    if not tasks:
        text = (
            f"its raster function {function} is not one a raster analysis task runs (object trackers run from Python)"
            if function.endswith(".py")
            else f"its .emd names no Python raster function (InferenceFunction: {function or 'none'}); repackage "
            "the model with a current gpjobs"
        )
        raise ParameterError([f"model: {where} ({model_type}): {text}"])
    if request.task not in tasks:
        raise ParameterError(
            [
                f"model: {where} is a {model_type} package (raster function {function}), which "
                f"runs with {' or '.join(tasks)}, not {request.task}; submit it to that task, or "
                f"choose a model for {request.task}"
            ]
        )
    problems = _raster_fit(request, emd)
    if problems:
        raise ParameterError(problems)
    return request.replace(model_type=model_type, inference_function=function)


def _raster_fit(request: InferenceRequest, emd: Mapping[str, Any]) -> list[str]:
    bands = [int(b) for b in emd.get("ExtractBands") or [0, 1, 2]]
    dtype = str((emd.get("Gpjobs") or {}).get("dtype") or "")
    names = _raster_parameter_names(request.task)
    problems: list[str] = []
    for name, raster in zip(names, request.rasters):
        for path in raster.files:
            try:
                info = describe_raster(path)
            except GridError as exc:
                problems.append(f"{name}: {Path(path).name} is {exc}")
                continue
            label = Path(path).name
            if info.count <= max(bands):
                problems.append(
                    f"{name}: {label} has {info.count} band(s) but the model reads bands "
                    f"{[b + 1 for b in bands]} (it was trained on {len(bands)}-band chips); use a "
                    "raster with the bands of the training data"
                )
            elif dtype and info.dtypes[bands[0]] != dtype:
                problems.append(
                    f"{name}: {label} is {info.dtypes[bands[0]]} but the model was trained on {dtype} "
                    f"chips (its normalisation would be wrong); convert the raster to {dtype}"
                )
    return problems


def _raster_parameter_names(task: str) -> tuple[str, ...]:
    return ("fromRaster", "toRaster") if task == DETECT_CHANGE else ("inputRaster",)


def check_grid(name: str, raster: RasterInput, extent: Extent | None, cell_size: float | None) -> None:
    """The extent overlaps every input raster (ValueError naming `context` otherwise)."""
    if extent is None and cell_size is None:
        return
    for path in raster.files:
        try:
            info = describe_raster(path)
        except GridError as exc:
            raise ValueError(f"{name}: {Path(path).name} is {exc}") from None
        try:
            target_grid(info, extent, cell_size)
        except GridError as exc:
            raise ValueError(f"context: {exc} ({name} {Path(path).name})") from None


@dataclass(frozen=True)
class CommonInputs:
    """What every inference task parses the same way."""

    model: ModelRef | None
    arguments: dict[str, str] | None
    context: Context | None
    extent: Extent | None = None
    cell_size: float | None = None
    separately: bool = False

    def request(self, task: str, **fields: Any) -> InferenceRequest:
        """The task's request once every parameter parsed (after `problems.raise_if_any()`), with the checks
        that need the model file when it is known already."""
        assert self.model is not None and self.arguments is not None and self.context is not None, "unchecked"
        return finish_request(
            InferenceRequest(
                task=task,
                model=self.model,
                arguments=self.arguments,
                context=self.context,
                extent=self.extent,
                cell_size=self.cell_size,
                process_separately=self.separately,
                **fields,
            )
        )


def parse_common(
    values: Mapping[str, Any],
    resolver: PathResolver,
    problems: Problems,
    *,
    model_names: tuple[str, ...] = ("model",),
    argument_names: tuple[str, ...] = ("modelArguments",),
    max_arguments_bytes: int = DEFAULT_MAX_ARGUMENTS_BYTES,
    modes: bool = True,
) -> CommonInputs:
    """model, modelArguments, context and (where the task has it) processingMode."""
    model_name, model_raw = first_set(values, *model_names)
    model = problems.attempt(parse_model, model_name, model_raw, resolver)
    argument_name, argument_raw = first_set(values, *argument_names)
    arguments = problems.attempt(parse_model_arguments, argument_name, argument_raw, max_arguments_bytes)
    parsed = problems.attempt(parse_inference_context, values.get("context"))
    context, extent, cell_size = parsed if parsed is not None else (None, None, None)
    separately = bool(problems.attempt(parse_processing_mode, values)) if modes else False
    return CommonInputs(model, arguments, context, extent, cell_size, separately)


def finish_request(request: InferenceRequest) -> InferenceRequest:
    """Checks that need the model file, when it is known already (a file on a share; an item's waits for the
    store)."""
    return check_model_fits(request) if request.model.path else request
