"""Issue 11, defect 1: the output folder is checked at submit but written at publish. Whoever can write into
the share must not be able to make the server write outside it by swapping a folder for a link meanwhile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpjobs.domain import JobStatus
from gpjobs.paths import OutsideStore, open_store_folder

TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT)


@pytest.mark.slow  # a training child per case
@pytest.mark.parametrize("swapped", ["models/mine", "models"])
async def test_output_folder_swapped_for_a_link_while_training_fails_the_job_and_writes_nothing_outside(
    make_harness, monkeypatch, tmp_path: Path, swapped: str
) -> None:
    monkeypatch.setenv("GPJOBS_FAKE_EPOCH_S", "0.6")
    h = make_harness()
    share = h.config.file_shares["default"]
    (share / "models" / "mine").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "mine").mkdir(parents=True)
    await h.start()
    job = await h.submit(
        "slow",
        name="mine",
        max_epochs=3,
        output={
            "kind": "uri",
            "name": "mine",
            "path": str(share / "models" / "mine"),
            "alias": "/fileShares/default/models/mine",
        },
    )
    await h.wait_running(job.job_id)
    # The attack: while the job trains, the checked folder becomes a link to a folder outside every store.
    victim = share / swapped
    victim.rename(victim.with_name(victim.name + ".moved"))
    victim.symlink_to(outside / "mine" if swapped.endswith("mine") else outside, target_is_directory=True)
    done = await h.wait(job.job_id, *TERMINAL, timeout=30)
    assert sorted(p.name for p in outside.rglob("*") if p.is_file()) == []  # nothing written outside
    assert done.status is JobStatus.FAILED
    assert "/fileShares/default/models/mine/mine.dlpk" in done.error  # names the output ...
    assert "symbolic link" in done.error and "submit the job again" in done.error  # ... and the fix
    assert done.attempts == 1  # a refused output is the user's to fix: no retry


async def test_file_share_output_still_written_through_real_folders(harness) -> None:
    share = harness.config.file_shares["default"]
    (share / "models").mkdir(parents=True)
    await harness.start()
    job = await harness.submit(
        "ok",
        name="fine",
        max_epochs=1,
        output={
            "kind": "uri",
            "name": "fine",
            "path": str(share / "models" / "fine"),
            "alias": "/fileShares/default/models/fine",
        },
    )
    done = await harness.wait(job.job_id, *TERMINAL)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert (share / "models" / "fine" / "fine.dlpk").read_bytes().startswith(b"PK fake")
    assert [p.name for p in (share / "models" / "fine").iterdir()] == ["fine.dlpk"]  # no temp file left


def test_open_store_folder_walks_real_folders_only(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    fd = open_store_folder(root, root / "a" / "b" / "new", create=True)
    try:
        with open(os.open("x", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as fh:
            fh.write("ok")
    finally:
        os.close(fd)
    assert (root / "a" / "b" / "new" / "x").read_text() == "ok"
    (root / "a" / "link").symlink_to(outside, target_is_directory=True)
    (root / "a" / "inside-link").symlink_to(root / "a" / "b", target_is_directory=True)
    (root / "a" / "file").write_text("")
    for bad in ("a/link", "a/link/deeper", "a/inside-link", "a/file/x"):
        with pytest.raises(OutsideStore, match="not a plain folder"):
            os.close(open_store_folder(root, root / bad, create=True))
    with pytest.raises(OutsideStore):
        open_store_folder(root, outside)
    assert list(outside.iterdir()) == []
