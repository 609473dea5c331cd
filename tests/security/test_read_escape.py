"""Issue 11, defect 2: links inside an export folder (or the folder itself swapped for a link after submit)
must not make the server's submit check or the training child read files outside the store.

Each link points at a valid copy of the file it replaces, so only the store check can refuse it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gpjobs.paths import OutsideStore, StoreRoots, open_in_store
from gpjobs.tasks.params import ParameterError
from gpjobs.tasks.train import parse_training_request
from gpjobs.training.protocol import ChildRuntime, ExitCode, JobSpec

SEG = "exports/seg"
FILES = {
    "chip": "images/000000000.tif",
    "label": "labels/000000000.tif",
    "map.txt": "map.txt",
    "stats": "esri_accumulated_stats.json",
    ".emd": "esri_model_definition.emd",
}
METADATA = ("map.txt", "stats", ".emd")


def link_out(path: Path, outside: Path) -> Path:
    """Replace `path` by a link to a copy of it outside the store; returns the copy."""
    copy = outside / path.name
    shutil.copy2(path, copy)
    path.unlink()
    path.symlink_to(copy)
    return copy


def request_values(**extra: str) -> dict[str, str]:
    return {
        "in_folder": f"/fileShares/default/{SEG}",
        "model_type": "UNET",
        "output_name": '{"name": "m"}',
        "backbone_model": "RESNET18",
        "batch_size": "2",
        "max_epochs": "1",
        "learning_rate": "0.01",
        "arguments": '{"chip_size": "32"}',
        **extra,
    }


def run_child(tmp_path: Path, request) -> tuple[ExitCode, list[dict]]:
    """The training child's work (run_job), in-process: what it reports for this request."""
    from gpjobs.training.events import ListReporter
    from gpjobs.training.run_job import run_job

    reporter = ListReporter()
    spec = JobSpec(
        job_id="t",
        work_dir=str(tmp_path / "work"),
        request=request,
        runtime=ChildRuntime(num_threads=1, missing_weights="random"),
    )
    return run_job(spec, reporter), reporter.events


def failure_text(events: list[dict]) -> str:
    failed = [e for e in events if e["type"] == "failed"]
    assert failed, [e for e in events if e["type"] in ("message", "result")]
    return failed[-1]["text"] + "\n" + "\n".join(failed[-1].get("details") or [])


@pytest.mark.parametrize("what", METADATA)
def test_submit_check_refuses_metadata_linked_out_of_the_store(
    roots: StoreRoots, share: Path, outside: Path, what: str
) -> None:
    link_out(share / SEG / FILES[what], outside)
    with pytest.raises(ParameterError) as caught:
        parse_training_request(request_values(), roots)
    problem = next(d for d in caught.value.details if d.startswith("in_folder"))
    assert f"{SEG}/{FILES[what]}" in problem and "leads outside its data store" in problem, problem
    assert str(outside) not in problem  # the link's target is not told


@pytest.mark.parametrize("what", list(FILES))
def test_child_refuses_a_file_linked_out_of_the_store_after_submit(
    tmp_path: Path, roots: StoreRoots, share: Path, outside: Path, what: str
) -> None:
    request = parse_training_request(request_values(), roots)  # clean at submit
    assert [f.root for f in request.in_folders] == [str(share.resolve())]
    link_out(share / SEG / FILES[what], outside)  # planted while the job waits
    code, events = run_child(tmp_path, request)
    text = failure_text(events)
    assert code is ExitCode.BAD_INPUT, text
    assert FILES[what] in text and "outside the data store" in text.replace("its data store", "the data store"), text
    assert not any(e["type"] == "epoch" for e in events)  # nothing was trained on it


def test_child_refuses_the_whole_folder_swapped_for_a_link(
    tmp_path: Path, roots: StoreRoots, share: Path, outside: Path
) -> None:
    request = parse_training_request(request_values(), roots)
    (share / SEG).rename(outside / "seg")
    (share / SEG).symlink_to(outside / "seg", target_is_directory=True)
    code, events = run_child(tmp_path, request)
    text = failure_text(events)
    assert code is ExitCode.BAD_INPUT and "leads outside its data store" in text, text
    with pytest.raises(ParameterError, match="leads outside its data store"):
        parse_training_request(request_values(), roots)  # and a new submit is refused at once


def test_links_that_stay_inside_the_store_are_fine(tmp_path: Path, roots: StoreRoots, share: Path) -> None:
    from gpjobs.export import scan_folders

    pool = share / "pool"
    pool.mkdir()
    chip = share / SEG / FILES["chip"]
    shutil.move(chip, pool / chip.name)
    chip.symlink_to(pool / chip.name)
    request = parse_training_request(request_values(), roots)
    scan = scan_folders([f.local for f in request.in_folders], roots=[f.root for f in request.in_folders])
    assert scan.report.ok and scan.report.chips == 4, scan.report.errors


@pytest.mark.timeout(60)
def test_a_fifo_planted_as_a_chip_is_never_opened(share: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the listing skips what is not a file, and
    open_in_store opens non-blocking and refuses what is not a regular file."""
    from gpjobs.export import scan_folders

    chip = share / SEG / FILES["chip"]
    chip.unlink()
    os.mkfifo(chip)
    report = scan_folders([share / SEG], roots=[share]).report
    assert report.chips == 3 and report.ok, report.errors
    with pytest.raises(OutsideStore, match="not a regular file"):
        open_in_store(chip, share)


def test_open_in_store_checks_the_file_it_opened(monkeypatch, share: Path, outside: Path) -> None:
    """A link swapped back between the open and the check: the path then resolves inside the store, but the
    file opened is the outside one; the inode comparison refuses it."""
    inside = share / SEG / FILES["stats"]
    secret = outside / "secret.json"
    secret.write_text("{}")
    planted = share / SEG / "planted.json"
    planted.symlink_to(secret)
    real_realpath = os.path.realpath
    monkeypatch.setattr(
        os.path, "realpath", lambda p, **kw: str(inside) if Path(p) == planted else real_realpath(p, **kw)
    )
    with pytest.raises(OutsideStore, match="changed while it was being opened"):
        open_in_store(planted, share)
    monkeypatch.undo()
    with pytest.raises(OutsideStore, match=f"'{SEG}/planted.json' leads outside"):
        open_in_store(planted, share)
    with open_in_store(inside, share) as fh:
        assert json.loads(fh.read())


# --- pretrained_model packages --------------------------------------------------------------------------


def write_model_folder(folder: Path, model_file: str = "m.pth") -> Path:
    folder.mkdir(parents=True)
    (folder / "m.emd").write_text(json.dumps({"ModelName": "UnetClassifier", "ModelFile": model_file}))
    (folder / "m.pth").write_bytes(b"weights")
    return folder


def test_pretrained_package_linked_out_of_the_store_is_refused(share: Path, outside: Path, roots: StoreRoots) -> None:
    from gpjobs.training.package import PackageError, open_package

    models = share / "models"
    write_model_folder(models / "m")
    shutil.make_archive(str(models / "m"), "zip", models / "m")
    (models / "m.zip").rename(models / "m.dlpk")
    values = request_values(pretrained_model='{"uri": "/fileShares/default/models/m.dlpk"}')
    pretrained = parse_training_request(values, roots).pretrained  # a real package at submit
    assert pretrained.root == str(share.resolve())
    link_out(models / "m.dlpk", outside)  # then a link to one outside
    with (
        pytest.raises(PackageError, match="'models/m.dlpk' leads outside its data store"),
        open_package(pretrained.path, pretrained.root),
    ):
        pass
    with open_package(outside / "m.dlpk") as package:  # the package itself is fine
        assert package.emd["ModelFile"] == "m.pth"


@pytest.mark.parametrize("attack", ["linked weights", "ModelFile path", "linked emd"])
def test_pretrained_model_folder_cannot_read_outside(share: Path, outside: Path, attack: str) -> None:
    from gpjobs.training.package import PackageError, open_package

    folder = write_model_folder(
        share / "models" / "m", "../../../outside/m.pth" if attack == "ModelFile path" else "m.pth"
    )
    (outside / "m.pth").write_bytes(b"secret weights")
    if attack == "linked weights":
        (folder / "m.pth").unlink()
        (folder / "m.pth").symlink_to(outside / "m.pth")
    if attack == "linked emd":
        link_out(folder / "m.emd", outside)
    with pytest.raises(PackageError, match="outside"), open_package(folder, share) as package:
        package.open_weights().close()
