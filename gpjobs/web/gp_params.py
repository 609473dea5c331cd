"""TrainDeepLearningModel parameters: declarations, parsing as real clients send them, submit-time checks.

`parse_submit` turns the submitted form into a normalised spec (keys named like `JobSpec` fields, plus
`output`, `context`, `data_format`) and collects every problem, each naming its parameter and what is
allowed. `check_with_store` adds the checks that need the store (name clash, pretrained item access).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpjobs import catalog
from gpjobs.paths import PathError, StoreRoots, resolve_folders, resolve_path
from gpjobs.export import ExportFolderError, export_format

TASK_NAME = "TrainDeepLearningModel"


@dataclass(frozen=True)
class GPParameter:
    """One task parameter as declared in the task JSON."""

    name: str
    data_type: str
    display_name: str
    description: str
    required: bool = False
    default: Any = ""
    choices: tuple[str, ...] = ()
    direction: str = "esriGPParameterDirectionInput"


INPUT_PARAMETERS: tuple[GPParameter, ...] = (
    GPParameter("in_folder", "GPString", "Input Training Data",
                "Export folder(s): /fileShares/<store>/<folder>, /rasterStores/<store>/<folder>, a comma-separated "
                'list, {"uri": "..."} or {"uris": ["...", "..."]}.', required=True),
    GPParameter("output_name", "GPString", "Output Model",
                '{"name": "<model>"} (optionally with "folderId") publishes an item; '
                '{"uri": "/fileShares/<store>/<folder>"} writes the .dlpk to a file share.', required=True),
    GPParameter("model_type", "GPString", "Model Type", "The model architecture to train.", required=True,
                choices=tuple(catalog.implemented_model_types())),
    GPParameter("arguments", "GPString", "Model Arguments",
                'JSON object of model arguments, e.g. {"chip_size": "224"}.'),
    GPParameter("batch_size", "GPLong", "Batch Size", "Chips per training step.", default=2),
    GPParameter("max_epochs", "GPLong", "Max Epochs", "Maximum passes over the training data.", default=20),
    GPParameter("learning_rate", "GPDouble", "Learning Rate",
                "Empty or 0: found automatically with a learning-rate range test.", default=None),
    GPParameter("backbone_model", "GPString", "Backbone Model",
                "Backbone network; empty: the model type's default.", choices=catalog.ALL_BACKBONES),
    GPParameter("validation_percent", "GPDouble", "Validation %",
                "Share of chips held out for validation, 0 <= v < 50.", default=10),
    GPParameter("pretrained_model", "GPString", "Pre-trained Model",
                '{"itemId": "<id>"} or {"uri": "/fileShares/<store>/<file>.dlpk"} to fine-tune from.'),
    GPParameter("stop_training", "GPBoolean", "Stop when model stops improving", "Early stopping.", default=True),
    GPParameter("overwrite_model", "GPBoolean", "Overwrite Model",
                "Replace an existing item of the same name.", default=False),
    GPParameter("context", "GPString", "Context",
                'Environment settings, e.g. {"processorType": "GPU"}.'),
    GPParameter("freeze_model", "GPBoolean", "Freeze Model",
                "Train only the head (backbone frozen) before fine-tuning.", default=True),
)
OUTPUT_PARAMETER = GPParameter("out_item", "GPString", "Output Model Item", "The trained deep learning package.",
                               default=None, direction="esriGPParameterDirectionOutput")
INPUT_NAMES = tuple(p.name for p in INPUT_PARAMETERS)
PARAMETERS_BY_NAME = {p.name: p for p in (*INPUT_PARAMETERS, OUTPUT_PARAMETER)}

# Spelling-insensitive lookup: overwriteModel, overwrite_model, freeze_Model, FREEZE_MODEL, inFolder ...
_CANONICAL = {p.name.replace("_", "").lower(): p.name for p in INPUT_PARAMETERS}

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_ITEM_URL = re.compile(r"/items/([0-9a-fA-F]{32})(?:/|$|\?)")
_BAD_NAME_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
MAX_NAME_LENGTH = 128
PROCESSOR_TYPES = ("CPU", "GPU")
EXPORT_MARKERS = ("/fileshares/", "/rasterstores/", "/cloudstores/")


class ParameterError(Exception):
    """Invalid or missing input parameters; `details` has one line per problem, each naming its parameter."""

    def __init__(self, details: list[str]) -> None:
        super().__init__("; ".join(details))
        self.details = details


@dataclass(frozen=True)
class Limits:
    max_arguments_bytes: int = 16 * 1024

    @classmethod
    def from_config(cls, config: Any) -> "Limits":
        value = getattr(config, "max_arguments_bytes", None)
        return cls(max_arguments_bytes=int(value)) if value else cls()


@dataclass
class SubmitRequest:
    """A parsed submission: raw inputs (served back by jobs/<id>/inputs) and the normalised spec."""

    inputs: dict[str, str]
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return str(self.spec["model_type"])


def canonical_name(key: str) -> str | None:
    """The declared parameter name for a submitted key in any client spelling, or None."""
    return _CANONICAL.get(key.replace("_", "").lower())


def collect_inputs(params: Mapping[str, str]) -> dict[str, str]:
    """Submitted values of declared inputs by canonical name; other keys (f, token, env:*) are ignored."""
    inputs: dict[str, str] = {}
    for key, value in params.items():
        name = canonical_name(key)
        # Both spellings may arrive (an empty overwrite_model next to overwriteModel=true): set wins.
        if name is not None and (name not in inputs or is_unset(inputs[name])):
            inputs[name] = value
    return inputs


def is_unset(value: Any) -> bool:
    """Clients send "" (and some `null`) for a parameter they leave unset."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "null"))


def parse_bool(name: str, raw: str | None, default: bool) -> bool:
    if is_unset(raw):
        return default
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "t", "y"):
        return True
    if text in ("false", "0", "no", "f", "n"):
        return False
    raise ValueError(f"{name}: '{raw}' is not a boolean; use true or false")


def parse_int(name: str, raw: str | None, default: int, *, minimum: int = 1, maximum: int = 1_000_000) -> int:
    if is_unset(raw):
        return default
    try:
        number = float(str(raw).strip())
    except ValueError:
        raise ValueError(f"{name}: '{raw}' is not a whole number; use an integer from {minimum} to {maximum}")
    if not math.isfinite(number) or number != int(number) or not minimum <= number <= maximum:
        raise ValueError(f"{name}: '{raw}' is not allowed; use an integer from {minimum} to {maximum}")
    return int(number)


def parse_float(name: str, raw: str | None) -> float | None:
    if is_unset(raw):
        return None
    try:
        number = float(str(raw).strip())
    except ValueError:
        raise ValueError(f"{name}: '{raw}' is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}: '{raw}' is not a finite number")
    return number


def _json_object(name: str, raw: str) -> dict[str, Any] | None:
    """A JSON object parsed from text, None when the text is not JSON at all, ValueError when malformed."""
    text = raw.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a JSON object")
    return value


def parse_arguments_value(raw: str | None, limits: Limits) -> dict[str, Any]:
    """`arguments` as a dict: a JSON object, or Esri's `name value;name 'value'` text."""
    if is_unset(raw):
        return {}
    assert raw is not None
    if len(raw.encode("utf-8")) > limits.max_arguments_bytes:
        raise ValueError(f"arguments: {len(raw.encode('utf-8'))} bytes is more than the "
                         f"{limits.max_arguments_bytes} allowed")
    obj = _json_object("arguments", raw)
    if obj is not None:
        return obj
    result: dict[str, Any] = {}
    for part in raw.split(";"):
        part = part.strip()
        if not part:
            continue
        key, _, value = part.partition(" ")
        if not value.strip():
            raise ValueError(f"arguments: '{part}' has no value; use a JSON object like "
                             '{"chip_size": "224"}')
        result[key.strip()] = value.strip().strip("'\"")
    return result


def check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("output_name: the model name is empty")
    if len(name) > MAX_NAME_LENGTH or _BAD_NAME_CHARS.search(name) or name in (".", ".."):
        raise ValueError(f"output_name: '{name}' is not a valid model name; use up to {MAX_NAME_LENGTH} "
                         'letters, digits, spaces, "_", "-" or "." (no path separators)')
    return name


def parse_output_name(raw: str | None, roots: StoreRoots) -> dict[str, Any]:
    """`output_name` -> {"kind": "item", "name", "folder_id"} or {"kind": "uri", "name", "alias", "path"}."""
    if is_unset(raw):
        raise ValueError('output_name: required; use {"name": "<model>"} or {"uri": "/fileShares/<store>/<folder>"}')
    assert raw is not None
    obj = _json_object("output_name", raw)
    if obj is None:
        text = raw.strip()
        obj = {"uri": text} if any(m in text.lower() for m in EXPORT_MARKERS) else {"name": text}
    if "uri" in obj:
        uri = obj["uri"]
        if not isinstance(uri, str) or not uri.strip():
            raise ValueError('output_name: "uri" must be a path like /fileShares/<store>/<folder>')
        try:
            resolved = resolve_path(uri, roots)
        except PathError as exc:
            raise ValueError(f"output_name: {exc}") from None
        folder = resolved.local
        name = folder.name
        if name.lower().endswith(".dlpk"):
            name, folder = name[:-5], folder.parent
        if folder == resolved.root:
            raise ValueError("output_name: name a folder inside the store, e.g. /fileShares/<store>/models/<name>")
        if not folder.parent.is_dir():
            raise ValueError(f"output_name: the parent folder of '{uri}' does not exist")
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"output_name: '{uri}' exists and is not a folder")
        return {"kind": "uri", "name": check_name(name), "alias": resolved.alias, "path": str(folder)}
    service = obj.get("serviceProperties") if isinstance(obj.get("serviceProperties"), dict) else {}
    item_props = obj.get("itemProperties") if isinstance(obj.get("itemProperties"), dict) else {}
    name = obj.get("name", service.get("name"))
    if not isinstance(name, str):
        raise ValueError('output_name: expected {"name": "<model>"} or {"uri": "/fileShares/<store>/<folder>"}')
    folder_id = obj.get("folderId", item_props.get("folderId"))
    if is_unset(folder_id):
        folder_id = None
    elif not isinstance(folder_id, str) or not _HEX32.match(folder_id):
        raise ValueError(f"output_name: folderId '{folder_id}' is not a folder id (32 hexadecimal characters)")
    return {"kind": "item", "name": check_name(name), "folder_id": folder_id.lower() if folder_id else None}


def parse_pretrained(raw: str | None, roots: StoreRoots) -> dict[str, Any] | None:
    """`pretrained_model` -> {"item_id": id} or {"path": local, "alias": ...}; the file must exist."""
    if is_unset(raw):
        return None
    assert raw is not None
    obj = _json_object("pretrained_model", raw)
    if obj is None:
        text = raw.strip()
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
        return {"item_id": item_id.lower()}
    uri = obj.get("uri")
    if not isinstance(uri, str):
        raise ValueError('pretrained_model: use {"itemId": "<id>"} or {"uri": "/fileShares/<store>/<model>.dlpk"}')
    try:
        resolved = resolve_path(uri, roots)
    except PathError as exc:
        raise ValueError(f"pretrained_model: {exc}") from None
    local = resolved.local
    usable = (local.is_file() and local.suffix.lower() in (".dlpk", ".emd")) or (
        local.is_dir() and any(p.suffix.lower() == ".emd" for p in local.iterdir()))
    if not usable:
        raise ValueError(f"pretrained_model: '{uri}' is not a .dlpk file, an .emd file or a model folder with an .emd")
    return {"path": str(local), "alias": resolved.alias}


def parse_context(raw: str | None) -> dict[str, Any]:
    """`context` -> dict; processorType and parallelProcessingFactor checked, other keys kept as given."""
    if is_unset(raw):
        return {}
    assert raw is not None
    obj = _json_object("context", raw)
    if obj is None:
        raise ValueError('context: expected a JSON object such as {"processorType": "GPU"}')
    processor = obj.get("processorType")
    if not is_unset(processor):
        if not isinstance(processor, str) or processor.strip().upper() not in PROCESSOR_TYPES:
            raise ValueError(f"context: processorType '{processor}' is not allowed; use CPU or GPU")
        obj["processorType"] = processor.strip().upper()
    factor = obj.get("parallelProcessingFactor")
    if not is_unset(factor):
        text = str(factor).strip().rstrip("%")
        try:
            if float(text) < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"context: parallelProcessingFactor '{factor}' must be a number or a percentage") from None
    return obj


def parse_submit(params: Mapping[str, str], roots: StoreRoots, limits: Limits | None = None) -> SubmitRequest:
    """Parse and check every submitted parameter; ParameterError lists all problems at once."""
    limits = limits or Limits()
    inputs = collect_inputs(params)
    problems: list[str] = []
    spec: dict[str, Any] = {}

    def attempt(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, catalog.ArgumentError) as exc:
            problems.append(str(exc))
            return None

    info = None
    if is_unset(inputs.get("model_type")):
        problems.append(f"model_type: required; use one of {', '.join(catalog.implemented_model_types())}")
    else:
        info = attempt(catalog.lookup_model_type, inputs["model_type"])  # its message names model_type
    if info is not None:
        spec["model_type"] = info.name
        backbone = attempt(catalog.resolve_backbone, info, None if is_unset(inputs.get("backbone_model"))
                           else inputs["backbone_model"])
        spec["backbone_model"] = backbone
        arguments = attempt(parse_arguments_value, inputs.get("arguments"), limits)
        if arguments is not None:
            try:
                catalog.parse_arguments(info, arguments)
                spec["arguments"] = arguments
            except catalog.ArgumentError as exc:
                problems.append(f"arguments: {exc}")

    spec.update(_parse_in_folder(inputs.get("in_folder"), roots, info, problems))
    spec["output"] = attempt(parse_output_name, inputs.get("output_name"), roots)
    if spec["output"]:
        spec["output_name"] = spec["output"]["name"]
    spec["batch_size"] = attempt(parse_int, "batch_size", inputs.get("batch_size"), 2, maximum=4096)
    spec["max_epochs"] = attempt(parse_int, "max_epochs", inputs.get("max_epochs"), 20, maximum=10_000)
    lr = attempt(parse_float, "learning_rate", inputs.get("learning_rate"))
    if lr is not None and lr < 0:
        problems.append(f"learning_rate: {lr} is negative; use a positive number, or leave it empty to find one")
    spec["learning_rate"] = lr if lr else None  # 0 and empty both mean: run the LR range test
    vp = attempt(parse_float, "validation_percent", inputs.get("validation_percent"))
    if vp is not None and not 0 <= vp < 50:
        problems.append(f"validation_percent: {vp:g} is not allowed; use a number from 0 up to (not including) 50")
    spec["validation_percent"] = 10.0 if vp is None else vp
    spec["pretrained"] = attempt(parse_pretrained, inputs.get("pretrained_model"), roots)
    pretrained = spec["pretrained"] or {}
    spec["pretrained_model"] = pretrained.get("path")
    spec["stop_training"] = attempt(parse_bool, "stop_training", inputs.get("stop_training"), True)
    spec["overwrite_model"] = attempt(parse_bool, "overwrite_model", inputs.get("overwrite_model"), False)
    spec["freeze_model"] = attempt(parse_bool, "freeze_model", inputs.get("freeze_model"), True)
    spec["context"] = attempt(parse_context, inputs.get("context"))
    if problems:
        raise ParameterError(problems)
    return SubmitRequest(inputs=inputs, spec=spec)


def _parse_in_folder(raw: str | None, roots: StoreRoots, info: catalog.ModelTypeInfo | None,
                     problems: list[str]) -> dict[str, Any]:
    if is_unset(raw):
        problems.append("in_folder: required; use /fileShares/<store>/<export folder> "
                        f"(registered stores: {roots.describe()})")
        return {}
    try:
        folders = resolve_folders(raw, roots)
    except PathError as exc:
        problems.append(f"in_folder: {exc}")
        return {}
    formats: dict[str, str] = {}
    for folder in folders:
        try:
            formats[folder.alias] = export_format(folder.local, folder.alias)
        except ExportFolderError as exc:
            problems.append(f"in_folder: '{folder.alias}' {exc}")
    if len(formats) != len(folders):
        return {}
    kinds = sorted(set(formats.values()))
    if len(kinds) > 1:
        problems.append(f"in_folder: the folders hold different formats ({', '.join(kinds)}); "
                        "combine only exports of the same metadata format")
        return {}
    data_format = kinds[0]
    if info is not None and data_format not in info.formats:
        fits = [n for n in catalog.implemented_model_types() if data_format in catalog.MODEL_TYPES[n].formats]
        problems.append(f"in_folder: the export format {data_format} cannot train model_type {info.name} "
                        f"(it needs {', '.join(sorted(info.formats))}); model types for {data_format}: "
                        f"{', '.join(fits) or 'none supported yet'}")
    return {"in_folders": [os.fspath(f.local) for f in folders], "in_folder_aliases": [f.alias for f in folders],
            "data_format": data_format}


def served_value(name: str, raw: str | None) -> Any:
    """An input value as served by jobs/<id>/inputs/<name>: exactly what was submitted ("" when not sent)."""
    return "" if raw is None else raw


async def check_with_store(req: SubmitRequest, store: Any, principal: Any) -> None:
    """Checks that need the store: an item name clash without overwrite, and pretrained item access.

    A pretrained item the caller may not read gets the same answer as a missing one.
    """
    problems: list[str] = []
    spec = req.spec
    output = spec.get("output") or {}
    if output.get("kind") == "item":
        existing = await store.find_item(principal.username, output["name"])
        if existing is not None:
            if spec.get("overwrite_model"):
                output["replace_item_id"] = existing.id
            else:
                problems.append(f"output_name: you already have a model named '{output['name']}' (item "
                                f"{existing.id}); set overwrite_model to true to replace it, or choose another name")
    pretrained = spec.get("pretrained") or {}
    if "item_id" in pretrained:
        item = await store.get_item(pretrained["item_id"])
        if item is None or not principal.can_see(item.owner):
            problems.append(f"pretrained_model: item {pretrained['item_id']} does not exist or is not "
                            "accessible to you")
        elif not item.path or not os.path.isfile(item.path):
            problems.append(f"pretrained_model: item {item.id} has no package file on this server")
        else:
            spec["pretrained_model"] = item.path
    if problems:
        raise ParameterError(problems)
