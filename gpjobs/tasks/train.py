"""TrainDeepLearningModel: its parameters, and the typed request a submission becomes.

`parse_training_request` checks every parameter and returns one frozen `TrainingRequest` (model type
resolved to its catalog entry, arguments typed, paths resolved, output decided). The server stores it as
the job's spec, the scheduler hands the same object to the training child, and `gpjobs train` builds it
from its flags through the same function: nothing downstream looks anything up again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gpjobs import catalog
from gpjobs.export import ExportFolderError, check_export
from gpjobs.export.metadata import ExportMeta
from gpjobs.parsing import is_unset, loads_json, parse_json_object
from gpjobs.paths import PathError, PathResolver, resolve_folders
from gpjobs.tasks.params import OUTPUT, GPParameter, ParameterError

TASK_NAME = "TrainDeepLearningModel"
PROCESSOR_TYPES = ("CPU", "GPU")
MAX_NAME_LENGTH = 128
DEFAULT_MAX_ARGUMENTS_BYTES = 8192
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_ITEM_URL = re.compile(r"/items/([0-9a-fA-F]{32})(?:/|$|\?)")
_BAD_NAME_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
_STORE_MARKERS = ("/fileshares/", "/rasterstores/", "/cloudstores/", "\\\\", "//")

INPUT_PARAMETERS: tuple[GPParameter, ...] = (
    GPParameter(
        "in_folder",
        "GPString",
        "Input Training Data",
        "Export folder(s): /fileShares/<store>/<folder>, /rasterStores/<store>/<folder>, a mapped UNC "
        'path, a comma-separated list, {"uri": "..."} or {"uris": ["...", "..."]}.',
        required=True,
    ),
    GPParameter(
        "output_name",
        "GPString",
        "Output Model",
        '{"name": "<model>"} (optionally with "folderId") publishes an item; '
        '{"uri": "/fileShares/<store>/<folder>"} writes the .dlpk to a file share.',
        required=True,
    ),
    GPParameter(
        "model_type",
        "GPString",
        "Model Type",
        "The model architecture to train.",
        required=True,
        choices=tuple(catalog.implemented_model_types()),
    ),
    GPParameter(
        "arguments",
        "GPString",
        "Model Arguments",
        'JSON object of model arguments, e.g. {"chip_size": "224"}, or Esri\'s "name value;name value".',
    ),
    GPParameter("batch_size", "GPLong", "Batch Size", "Chips per training step.", default=2, minimum=1, maximum=4096),
    GPParameter(
        "max_epochs",
        "GPLong",
        "Max Epochs",
        "Maximum passes over the training data.",
        default=20,
        minimum=1,
        maximum=10_000,
    ),
    GPParameter(
        "learning_rate",
        "GPDouble",
        "Learning Rate",
        "Empty or 0: found automatically with a learning-rate range test.",
        minimum=0,
        maximum=10,
    ),
    GPParameter(
        "backbone_model",
        "GPString",
        "Backbone Model",
        "Backbone network; empty: the model type's default.",
        choices=catalog.backbone_choices(),
    ),
    GPParameter(
        "validation_percent",
        "GPDouble",
        "Validation %",
        "Share of chips held out for validation.",
        default=10.0,
        minimum=0,
        maximum=50,
        maximum_exclusive=True,
    ),
    GPParameter(
        "pretrained_model",
        "GPString",
        "Pre-trained Model",
        '{"itemId": "<id>"}, an item URL, or {"uri": "/fileShares/<store>/<file>.dlpk"} to fine-tune from.',
    ),
    GPParameter("stop_training", "GPBoolean", "Stop when model stops improving", "Early stopping.", default=True),
    GPParameter(
        "overwrite_model", "GPBoolean", "Overwrite Model", "Replace an existing item of the same name.", default=False
    ),
    GPParameter("context", "GPString", "Context", 'Environment settings, e.g. {"processorType": "GPU"}.'),
    GPParameter(
        "freeze_model",
        "GPBoolean",
        "Freeze Model",
        "Train only the head (backbone frozen) before fine-tuning.",
        default=True,
    ),
)
OUTPUT_PARAMETER = GPParameter(
    "out_item", "GPString", "Output Model Item", "The trained deep learning package.", direction=OUTPUT
)
PARAMETERS = (*INPUT_PARAMETERS, OUTPUT_PARAMETER)
_BY_NAME = {p.name: p for p in PARAMETERS}


# --- the typed request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataFolder:
    """One export folder: as the user named it (messages show this), where it is on this machine, and the
    root of its store (every file read from it must lie inside that root when it is opened)."""

    alias: str
    local: str
    root: str


@dataclass(frozen=True)
class OutputTarget:
    """Where the package goes: a portal item (`kind` "item") or a folder of a file share ("uri")."""

    kind: str
    name: str
    folder_id: str | None = None  # item: the owner's folder
    replace_item_id: str | None = None  # item: overwrite_model replaces this one
    alias: str | None = None  # uri: /fileShares/<store>/<folder> as the user named it
    path: str | None = None  # uri: that folder on this machine

    @property
    def package_uri(self) -> str:
        """The file-share path of the written package, as the job result reports it."""
        return f"{(self.alias or '').rstrip('/')}/{self.name}.dlpk"


@dataclass(frozen=True)
class PretrainedModel:
    """A package to fine-tune from: a portal item (path filled in once the store is checked) or a file."""

    item_id: str | None = None
    path: str | None = None
    alias: str | None = None
    root: str | None = None  # a file's store root (its reads stay inside it); None: an item of the content store


@dataclass(frozen=True)
class Context:
    """Environment settings: `processorType` picks the slot kind; the rest is kept as given."""

    processor_type: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingRequest:
    """One validated TrainDeepLearningModel submission."""

    model_type: catalog.ModelTypeInfo
    backbone: str  # resolved ('' for model types without one)
    given_arguments: Mapping[str, Any]  # the arguments the user set, typed, by canonical name
    in_folders: tuple[DataFolder, ...]
    data_format: str
    output: OutputTarget
    batch_size: int
    max_epochs: int
    learning_rate: float | None  # None: find it with the learning-rate range test
    validation_percent: float
    pretrained: PretrainedModel | None
    stop_training: bool
    overwrite_model: bool
    freeze_model: bool
    context: Context
    notes: tuple[str, ...] = ()  # what the job reports as warnings: accepted input that changes nothing

    @property
    def arguments(self) -> dict[str, Any]:
        """Every argument of the model type: the given values over the declared defaults."""
        return {**{n: s.default for n, s in self.model_type.arguments.items()}, **self.given_arguments}

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_type"] = self.model_type.name
        data["given_arguments"] = dict(self.given_arguments)
        data["in_folders"] = [asdict(f) for f in self.in_folders]
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> TrainingRequest:
        """The request as stored (ValueError when the stored form is not one this version wrote)."""
        try:
            context = dict(data["context"])
            return cls(
                model_type=catalog.MODEL_TYPES[data["model_type"]],
                backbone=data["backbone"],
                given_arguments=dict(data["given_arguments"]),
                in_folders=tuple(DataFolder(**f) for f in data["in_folders"]),
                data_format=data["data_format"],
                output=OutputTarget(**data["output"]),
                batch_size=int(data["batch_size"]),
                max_epochs=int(data["max_epochs"]),
                learning_rate=data["learning_rate"],
                validation_percent=float(data["validation_percent"]),
                pretrained=PretrainedModel(**data["pretrained"]) if data["pretrained"] else None,
                stop_training=bool(data["stop_training"]),
                overwrite_model=bool(data["overwrite_model"]),
                freeze_model=bool(data["freeze_model"]),
                context=Context(context.get("processor_type"), dict(context.get("values") or {})),
                notes=tuple(data["notes"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the stored training request is incomplete or of an older version ({exc})") from None

    def replace(self, **changes: Any) -> TrainingRequest:
        return replace(self, **changes)


# --- parsing ---------------------------------------------------------------------------------------


def parse_training_request(
    values: Mapping[str, Any], resolver: PathResolver, *, max_arguments_bytes: int = DEFAULT_MAX_ARGUMENTS_BYTES
) -> TrainingRequest:
    """Check every parameter (values by declared name, text as clients send it or typed); ParameterError
    lists all problems at once, each naming its parameter and what is allowed."""
    problems: list[str] = []

    def attempt(parse: Callable[..., Any], *args: Any) -> Any:
        try:
            return parse(*args)
        except (ValueError, catalog.ArgumentError, PathError) as exc:
            problems.append(str(exc))
            return None

    def simple(name: str) -> Any:
        return attempt(_BY_NAME[name].parse, values.get(name))

    info = None
    if is_unset(values.get("model_type")):
        problems.append(f"model_type: required; use one of {', '.join(catalog.implemented_model_types())}")
    else:
        info = attempt(catalog.lookup_model_type, values["model_type"])  # its message names model_type
    backbone, given = "", {}
    if info is not None:
        raw_backbone = values.get("backbone_model")
        backbone = attempt(catalog.resolve_backbone, info, None if is_unset(raw_backbone) else raw_backbone)
        raw_arguments = attempt(parse_arguments_value, values.get("arguments"), max_arguments_bytes)
        if raw_arguments is not None:
            try:
                given = catalog.parse_given_arguments(info, raw_arguments)
            except catalog.ArgumentError as exc:
                problems.append(f"arguments: {exc}")
    folders = _parse_in_folder(values.get("in_folder"), resolver, info, problems)
    if info is not None and folders is not None:
        for tile in [given["chip_size"]] if given.get("chip_size") else folders[2]:
            problem = catalog.chip_size_problem(info, tile)
            if problem:
                problems.append(f"{'arguments' if given.get('chip_size') else 'in_folder'}: {problem}")
                break
    output = attempt(parse_output_name, values.get("output_name"), resolver)
    learning_rate = simple("learning_rate")
    request_values = dict(
        batch_size=simple("batch_size"),
        max_epochs=simple("max_epochs"),
        learning_rate=learning_rate or None,  # 0 and empty both mean: run the LR range test
        validation_percent=simple("validation_percent"),
        pretrained=attempt(parse_pretrained, values.get("pretrained_model"), resolver),
        stop_training=simple("stop_training"),
        overwrite_model=simple("overwrite_model"),
        freeze_model=simple("freeze_model"),
        context=attempt(parse_context, values.get("context")),
    )
    if problems:
        raise ParameterError(problems)
    assert info is not None and folders is not None
    return TrainingRequest(
        model_type=info,
        backbone=backbone,
        given_arguments=given,
        in_folders=folders[0],
        data_format=folders[1],
        output=output,
        notes=_notes(info, values, given),
        **request_values,
    )


def _notes(info: catalog.ModelTypeInfo, values: Mapping[str, Any], given: Mapping[str, Any]) -> tuple[str, ...]:
    """Accepted input that changes nothing for this model type (Esri's forms send it anyway)."""
    notes = [
        f"argument {name} has no effect on {info.name}: {info.arguments[name].no_effect}"
        for name in given
        if info.arguments[name].no_effect
    ]
    backbone = values.get("backbone_model")
    if not info.backbones and not is_unset(backbone):
        notes.append(f"{info.name} has fixed networks; backbone_model {str(backbone).strip().upper()} is ignored")
    return tuple(notes)


def parse_arguments_value(raw: Any, max_bytes: int = DEFAULT_MAX_ARGUMENTS_BYTES) -> dict[str, Any]:
    """`arguments` as a dict: a JSON object (or a dict), or Esri's `name value;name 'value'` text."""
    if is_unset(raw):
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    text = str(raw)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ValueError(f"arguments: {size} bytes is more than the {max_bytes} allowed")
    try:
        obj = parse_json_object(text)
    except ValueError as exc:
        raise ValueError(f"arguments: {exc}") from None
    if obj is not None:
        return obj
    result: dict[str, Any] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, _, value = part.partition(" ")
        if not value.strip():
            raise ValueError(f'arguments: \'{part}\' has no value; use a JSON object like {{"chip_size": "224"}}')
        result[key.strip()] = value.strip().strip("'\"")
    return result


def check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("output_name: the model name is empty")
    if len(name) > MAX_NAME_LENGTH or _BAD_NAME_CHARS.search(name) or name in (".", ".."):
        raise ValueError(
            f"output_name: '{name}' is not a valid model name; use up to {MAX_NAME_LENGTH} "
            'letters, digits, spaces, "_", "-" or "." (no path separators)'
        )
    return name


def _object(name: str, raw: Any) -> dict[str, Any] | None:
    try:
        return parse_json_object(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def parse_output_name(raw: Any, resolver: PathResolver) -> OutputTarget:
    """`output_name` -> an item target ({"name", "folderId"}) or a file-share folder ({"uri"})."""
    if is_unset(raw):
        raise ValueError('output_name: required; use {"name": "<model>"} or {"uri": "/fileShares/<store>/<folder>"}')
    obj = _object("output_name", raw)
    if obj is None:
        text = str(raw).strip()
        obj = {"uri": text} if any(m in text.lower() for m in _STORE_MARKERS) else {"name": text}
    if "uri" in obj:
        return _output_folder(obj["uri"], resolver)
    service = obj.get("serviceProperties")
    if not isinstance(service, dict):
        service = {}
    item_props = obj.get("itemProperties")
    if not isinstance(item_props, dict):
        item_props = {}
    name = obj.get("name", service.get("name"))
    if not isinstance(name, str):
        raise ValueError('output_name: expected {"name": "<model>"} or {"uri": "/fileShares/<store>/<folder>"}')
    folder_id = obj.get("folderId", item_props.get("folderId"))
    if is_unset(folder_id):
        folder_id = None
    elif not isinstance(folder_id, str) or not _HEX32.match(folder_id):
        raise ValueError(f"output_name: folderId '{folder_id}' is not a folder id (32 hexadecimal characters)")
    return OutputTarget(kind="item", name=check_name(name), folder_id=folder_id.lower() if folder_id else None)


def _output_folder(uri: Any, resolver: PathResolver) -> OutputTarget:
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError('output_name: "uri" must be a path like /fileShares/<store>/<folder>')
    try:
        resolved = resolver.resolve(uri)
    except PathError as exc:
        raise ValueError(f"output_name: {exc}") from None
    folder, alias = resolved.local, resolved.alias.rstrip("/")
    name = folder.name
    if name.lower().endswith(".dlpk"):
        name, folder, alias = name[:-5], folder.parent, alias.rsplit("/", 1)[0]
    if folder == resolved.root:
        raise ValueError("output_name: name a folder inside the store, e.g. /fileShares/<store>/models/<name>")
    if not folder.parent.is_dir():
        raise ValueError(f"output_name: the parent folder of '{uri}' does not exist")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output_name: '{uri}' exists and is not a folder")
    return OutputTarget(kind="uri", name=check_name(name), alias=alias, path=str(folder))


def parse_pretrained(raw: Any, resolver: PathResolver) -> PretrainedModel | None:
    """`pretrained_model` -> an item to look up, or a package file (.dlpk, .emd, or a model folder)."""
    if is_unset(raw):
        return None
    obj = _object("pretrained_model", raw)
    if obj is None:
        text = str(raw).strip()
        if _HEX32.match(text):
            obj = {"itemId": text}
        elif text.lower().startswith(("http://", "https://")):
            obj = {"url": text}
        else:
            obj = {"uri": text}
    item_id = obj.get("itemId") or obj.get("id")
    if item_id is None and isinstance(obj.get("url"), str):
        match = _ITEM_URL.search(obj["url"])
        if not match:
            raise ValueError(f"pretrained_model: url '{obj['url']}' is not a .../content/items/<id> item url")
        item_id = match.group(1)
    if item_id is not None:
        if not isinstance(item_id, str) or not _HEX32.match(item_id):
            raise ValueError(f"pretrained_model: '{item_id}' is not an item id (32 hexadecimal characters)")
        return PretrainedModel(item_id=item_id.lower())
    uri = obj.get("uri")
    if not isinstance(uri, str):
        raise ValueError('pretrained_model: use {"itemId": "<id>"} or {"uri": "/fileShares/<store>/<model>.dlpk"}')
    try:
        resolved = resolver.resolve(uri)
    except PathError as exc:
        raise ValueError(f"pretrained_model: {exc}") from None
    local = resolved.local
    usable = (local.is_file() and local.suffix.lower() in (".dlpk", ".emd")) or (
        local.is_dir() and any(p.suffix.lower() == ".emd" for p in local.iterdir())
    )
    if not usable:
        raise ValueError(f"pretrained_model: '{uri}' is not a .dlpk file, an .emd file or a model folder with an .emd")
    return PretrainedModel(path=str(local), alias=resolved.alias, root=str(resolved.root))


def parse_context(raw: Any) -> Context:
    """`context`: processorType (CPU | GPU) and parallelProcessingFactor checked, other keys kept as given."""
    if is_unset(raw):
        return Context()
    obj = _object("context", raw)
    if obj is None:
        raise ValueError('context: expected a JSON object such as {"processorType": "GPU"}')
    obj = dict(obj)
    processor = obj.get("processorType")
    kind = None
    if not is_unset(processor):
        if not isinstance(processor, str) or processor.strip().upper() not in PROCESSOR_TYPES:
            raise ValueError(f"context: processorType '{processor}' is not allowed; use CPU or GPU")
        kind = obj["processorType"] = processor.strip().upper()
    factor = obj.get("parallelProcessingFactor")
    if not is_unset(factor):
        text = str(factor).strip().rstrip("%")
        try:
            if float(text) < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"context: parallelProcessingFactor '{factor}' must be a number or a percentage") from None
    return Context(processor_type=kind, values=obj)


def _parse_in_folder(
    raw: Any, resolver: PathResolver, info: catalog.ModelTypeInfo | None, problems: list[str]
) -> tuple[tuple[DataFolder, ...], str, list[tuple[int, int] | None]] | None:
    """The export folders, their common metadata format and their tile sizes; problems are appended, None when
    unusable."""
    if is_unset(raw):
        problems.append(
            f"in_folder: required; use /fileShares/<store>/<export folder> (registered stores: {resolver.describe()})"
        )
        return None
    try:
        folders = resolve_folders(
            loads_json(raw) if isinstance(raw, str) and raw.strip()[:1] in "[{" else raw, resolver
        )
    except (PathError, ValueError) as exc:
        problems.append(f"in_folder: {exc}")
        return None
    metas: dict[str, ExportMeta] = {}
    for folder in folders:
        try:
            metas[folder.alias] = check_export(folder.local, folder.alias, root=folder.root)
        except ExportFolderError as exc:
            problems.append(f"in_folder: '{folder.alias}' {exc}")
    if len(metas) != len(folders):
        return None
    kinds = sorted({m.format for m in metas.values()})
    if len(kinds) > 1:
        problems.append(
            f"in_folder: the folders hold different formats ({', '.join(kinds)}); "
            "combine only exports of the same metadata format"
        )
        return None
    data_format = kinds[0]
    if info is not None and data_format not in info.formats:
        fits = [n for n in catalog.implemented_model_types() if data_format in catalog.MODEL_TYPES[n].formats]
        problems.append(
            f"in_folder: the export format {data_format} cannot train model_type {info.name} "
            f"(it needs {', '.join(sorted(info.formats))}); model types for {data_format}: "
            f"{', '.join(fits) or 'none supported yet'}"
        )
    return (
        tuple(DataFolder(alias=f.alias, local=os.fspath(f.local), root=os.fspath(f.root)) for f in folders),
        data_format,
        [m.tile_size for m in metas.values()],
    )
