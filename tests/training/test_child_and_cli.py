"""The child process (`python -m gpjobs.training`), `gpjobs train`, resume of a real run, fine-tuning."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from gpjobs.tasks.params import ParameterError
from gpjobs.training.protocol import ExitCode, decode_event
from tests.builders.exports import write_classified_tiles, write_labeled_tiles
from tests.training.helpers import (
    REPO,
    dlpk_members,
    emd_of,
    gpjobs,
    interrupted_and_resumed,
    make_spec,
    train,
    train_and_package,
)

torch.set_num_threads(1)


def _child(spec_path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gpjobs.training", "--spec", str(spec_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kw,
    )


def _events_until(proc, wanted: str, timeout: float = 240) -> list[dict]:
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        event = decode_event(line)
        assert event is not None, f"non-event on the child's stdout: {line!r}"
        events.append(event)
        if event["type"] == wanted:
            break
    return events


@pytest.mark.slow
def test_child_emits_events_and_packages(tmp_path):
    folder = write_classified_tiles(tmp_path, n=8, size=32)
    spec = make_spec(tmp_path, [folder], "UNET", backbone_model="RESNET18", max_epochs=1, heartbeat_seconds=0.5)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.to_json())
    proc = _child(spec_path)
    events = _events_until(proc, "result", timeout=300)  # stdin stays open: the lifeline holds
    code = proc.wait(timeout=60)
    err = proc.stderr.read()
    proc.stdin.close(), proc.stdout.close(), proc.stderr.close()
    kinds = [e["type"] for e in events]
    assert code == ExitCode.OK, err.decode()[-2000:]
    # heartbeats start before torch is imported; "started" is the first event that is not one
    started = next(e for e in events if e["type"] != "heartbeat")
    assert started["type"] == "started" and "epoch" in kinds and kinds[-1] == "result" and "heartbeat" in kinds
    assert started["resumed_from_epoch"] == 0 and started["torch"] == torch.__version__
    result = events[-1]
    assert result["package"] == str(spec.package_path) and spec.package_path.is_file()
    assert emd_of(result)["ModelName"] == "UnetClassifier"


@pytest.mark.slow
def test_child_sigterm_cancels_and_lifeline_loss_stops(tmp_path):
    folder = write_classified_tiles(tmp_path, n=16, size=32)
    for signal_it, expected in ((True, ExitCode.CANCELLED), (False, ExitCode.LIFELINE_LOST)):
        work = tmp_path / f"w{expected}"
        spec = make_spec(work, [folder], "UNET", backbone_model="RESNET18", max_epochs=50, batch_size=2)
        work.mkdir()
        (work / "spec.json").write_text(spec.to_json())
        proc = _child(work / "spec.json")
        events = _events_until(proc, "epoch")
        assert events and events[-1]["type"] == "epoch", events
        if signal_it:
            proc.send_signal(signal.SIGTERM)
        else:
            proc.stdin.close()
        assert proc.wait(timeout=120) == expected
        proc.stdout.close(), proc.stderr.close()


def test_bad_input_fails_with_a_fix_it_message(tmp_path):
    folder = write_classified_tiles(tmp_path, n=8, size=32)
    # Caught before any training, by the parser every entry point shares ...
    with pytest.raises(ParameterError, match="Classified_Tiles cannot train model_type FEATURE_CLASSIFIER"):
        make_spec(tmp_path, [folder], "FEATURE_CLASSIFIER", backbone_model="RESNET18")
    with pytest.raises(ParameterError, match="Valid backbones: RESNET18"):
        make_spec(tmp_path, [folder], "UNET", backbone_model="VGG16")
    # ... and again by the child, for a folder that changed after the job was accepted.
    labeled = write_labeled_tiles(tmp_path / "later", n=8, size=32)
    spec = make_spec(tmp_path, [labeled], "FEATURE_CLASSIFIER", backbone_model="RESNET18")
    shutil.rmtree(labeled)
    shutil.copytree(folder, labeled)
    code, reporter = train(spec)
    failed = [e for e in reporter.events if e["type"] == "failed"]
    assert code == ExitCode.BAD_INPUT and failed and "Classified_Tiles" in failed[0]["text"]


@pytest.mark.slow
def test_real_unet_run_resumes_after_kill_at_the_same_result(tmp_path):
    folder = write_classified_tiles(tmp_path, n=8, size=32)
    straight, resumed = interrupted_and_resumed(
        tmp_path, folder, "UNET", backbone_model="RESNET18", max_epochs=3, stop_training=False, batch_size=2
    )
    assert [e["epoch"] for e in resumed.epochs] == [2, 3]
    assert [e["valid_loss"] for e in resumed.epochs] == [e["valid_loss"] for e in straight.epochs][1:]
    assert resumed.metrics == straight.metrics


@pytest.mark.slow
def test_fine_tuning_starts_from_the_package(tmp_path):
    folder = write_classified_tiles(tmp_path, n=8, size=32)
    first = train_and_package(tmp_path / "a", folder, "UNET", backbone_model="RESNET18", max_epochs=2)
    package = first.package
    tuned = train_and_package(
        tmp_path / "b", folder, "UNET", backbone_model="RESNET34", max_epochs=1, pretrained_model=package
    )
    texts = " ".join(tuned.messages)
    assert "using it instead of RESNET34" in texts
    loaded = texts.split("Fine-tuning from model (gpjobs package): ")[1].split(" weight tensors loaded")[0]
    counts = [part.split()[1].split("/") for part in loaded.split(", ")]
    assert counts and all(a == b for a, b in counts), loaded  # every tensor came from the package
    assert tuned.emd["PretrainedWeights"] == f"fine-tuned from model (gpjobs package): {loaded} tensors"
    assert tuned.emd["backbone"] == "resnet18"
    # starting from trained weights, the first epoch beats the first epoch from scratch
    assert tuned.epochs[0]["valid_loss"] < first.epochs[0]["valid_loss"]
    other = write_labeled_tiles(tmp_path, n=8, size=32)
    wrong = train_and_package(
        tmp_path / "c",
        other,
        "FEATURE_CLASSIFIER",
        backbone_model="RESNET18",
        pretrained_model=package,
        expect=ExitCode.BAD_INPUT,
    )
    assert "is a UNET model" in wrong.failure


@pytest.mark.slow
def test_gpjobs_train_cli_writes_the_dlpk(tmp_path):
    folder = write_labeled_tiles(tmp_path, n=16, size=32)
    out = tmp_path / "out" / "cli_model.dlpk"
    done = gpjobs(
        "train",
        "--in-folder",
        str(folder),
        "--model-type",
        "FEATURE_CLASSIFIER",
        "--backbone-model",
        "MOBILENET_V2",
        "--max-epochs",
        "1",
        "--batch-size",
        "4",
        "--learning-rate",
        "0.001",
        "--no-freeze-model",
        "--arguments",
        '{"chip_size": 24}',
        "--threads",
        "1",
        "--output",
        str(out),
        "--json",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["package"] == str(out) and out.is_file()
    assert "Epoch 1/1: train_loss" in done.stderr
    assert {"cli_model.emd", "cli_model.pth"} <= dlpk_members(out)
    predicted = gpjobs("predict", str(out), str(sorted((folder / "images").iterdir())[0]))
    assert predicted.returncode == 0 and predicted.stdout.startswith("000000000")
    bad = gpjobs("train", "--in-folder", str(folder), "--model-type", "NOPE", "--output", str(tmp_path / "x.dlpk"))
    assert bad.returncode == ExitCode.BAD_INPUT and "is not a TrainDeepLearningModel model type" in bad.stderr


@pytest.mark.slow
def test_lr_finder_and_weights_outcome_reach_the_package(tmp_path):
    import torchvision

    from gpjobs.catalog import TORCHVISION_WEIGHT_FILES

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(
        torchvision.models.mobilenet_v2(weights=None).state_dict(), weights / TORCHVISION_WEIGHT_FILES["MOBILENET_V2"]
    )
    folder = write_labeled_tiles(tmp_path, n=12, size=32)
    # The range test may take 10 % of the planned steps and needs 20: plan 100 epochs of 2 steps, and stop after
    # epoch 2 (valid_loss cannot improve by 10)
    run = train_and_package(
        tmp_path / "a",
        folder,
        "FEATURE_CLASSIFIER",
        backbone_model="MOBILENET_V2",
        max_epochs=100,
        learning_rate=None,
        weights_dir=str(weights),
        missing_weights="fail",
        arguments={"patience": 1, "min_delta": 10},
    )
    emd = run.emd
    assert emd["PretrainedWeights"] == f"loaded {TORCHVISION_WEIGHT_FILES['MOBILENET_V2']}"
    finder = emd["Gpjobs"]["lr_finder"]
    assert finder["points"] >= 10 and emd["Gpjobs"]["learning_rate"] == finder["chosen"]
    assert "ModelCharacteristics/lr_finder.png" in run.members
    assert any(t.startswith("LR finder:") for t in run.messages)
    wrong = train_and_package(
        tmp_path / "b",
        folder,
        "FEATURE_CLASSIFIER",
        backbone_model="RESNET18",
        weights_dir=str(weights),
        missing_weights="fail",
        expect=ExitCode.BAD_INPUT,
    )
    assert "resnet18-f37072fd.pth" in wrong.failure


@pytest.mark.slow
def test_warm_child_imports_first_then_runs_the_job_it_is_handed(tmp_path):
    """`--warm`: one heartbeat once torch and the training code are imported, then the handoff line decides the
    job; its stderr goes to the handed log and it works in the job's folder. EOF instead of a job: exit 6."""
    folder = write_classified_tiles(tmp_path, n=8, size=32)
    work = tmp_path / "job"
    spec = make_spec(work, [folder], "UNET", backbone_model="RESNET18", max_epochs=1, heartbeat_seconds=0.5)
    work.mkdir()
    (work / "spec.json").write_text(spec.to_json())
    warm = [sys.executable, "-m", "gpjobs.training", "--warm"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    idle = subprocess.Popen(warm, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    proc = subprocess.Popen(
        warm, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        ready = decode_event(proc.stdout.readline())
        assert ready["type"] == "heartbeat" and ready["warm_import_s"] > 0
        handed = time.monotonic()
        log = work / "logs" / "attempt-1.log"
        log.parent.mkdir()
        proc.stdin.write(json.dumps({"spec": str(work / "spec.json"), "log": str(log)}).encode() + b"\n")
        proc.stdin.flush()
        started = decode_event(proc.stdout.readline())
        assert started["type"] == "started" and time.monotonic() - handed < 5  # no torch import left to pay
        events = _events_until(proc, "result", timeout=300)
        assert proc.wait(timeout=60) == ExitCode.OK, log.read_text()[-2000:]
        assert events[-1]["type"] == "result" and spec.package_path.is_file()
        assert os.readlink(f"/proc/{idle.pid}/cwd") == str(REPO)  # the idle one is still waiting where it was
        idle.stdin.close()
        assert idle.wait(timeout=120) == ExitCode.LIFELINE_LOST
    finally:
        for p in (idle, proc):
            if p.poll() is None:
                p.kill()
                p.wait()
