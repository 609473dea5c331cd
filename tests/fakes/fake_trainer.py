"""A fake training child that speaks gpjobs/training/protocol.py without torch (starts in ~50 ms).

Usage (as the server runs a child): fake_trainer.py --spec <work_dir>/spec.json, or fake_trainer.py --warm: the
warm protocol of gpjobs/training/__main__.py (one `heartbeat` line, then the handoff line on stdin; EOF exits).
Behaviour: the request's context["fake_behaviour"] (see tests/fakes/fake_jobs.py), else $GPJOBS_FAKE_BEHAVIOUR, else "ok":
  ok              train max_epochs epochs (checkpoint each), write the package, emit result, exit 0
  slow            like ok, $GPJOBS_FAKE_EPOCH_S seconds per epoch (default 0.5); SIGTERM -> exit 5 at the
                  next batch boundary after saving the epoch checkpoint (slow-with-checkpoints)
  crash           an exception after epoch 1: `failed` event, exit 1
  bad-input       exit 2 with a `failed` event naming the fix
  nan             epoch 1 then NaN loss: exit 3
  oom             exit 4
  sigkill-self    SIGKILL itself during epoch 1 (every attempt)
  sigkill-once    SIGKILL itself during epoch 2 unless resuming from a checkpoint
  hang            started, then silence: no heartbeats, no exit (until the lifeline closes)
  ignore-term     ignores SIGTERM, heartbeats, never finishes
  no-result       exits 0 without a result
Every run appends one JSON line to <work_dir>/fake_runs.jsonl (pid, resumed_from_epoch, behaviour).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo's gpjobs, protocol module only
from gpjobs.training.protocol import ExitCode, JobSpec, encode_event  # noqa: E402

_out = sys.stdout.buffer
sys.stdout = sys.stderr  # nothing but events on the pipe
_terminated = threading.Event()


def emit(event_type: str, **fields) -> None:
    _out.write(encode_event(event_type, **fields))
    _out.flush()


def watch_lifeline() -> None:
    """Exit when the server goes away (stdin EOF), like the real child."""
    while os.read(0, 1024):  # raw fd: a buffered reader's lock would block interpreter exit
        pass
    os._exit(int(ExitCode.LIFELINE_LOST))


def wait_for_job() -> Path | None:
    """The warm protocol, as the real child speaks it (gpjobs/training/__main__.py)."""
    emit("heartbeat", warm_import_s=0.0)
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 4096)
        if not chunk:
            return None
        line += chunk
    handoff = json.loads(line)
    fd = os.open(handoff["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(Path(handoff["spec"]).parent)
    return Path(handoff["spec"])


def main() -> int:
    if "--warm" in sys.argv:
        spec_path = wait_for_job()
        if spec_path is None:
            return ExitCode.LIFELINE_LOST
    else:
        spec_path = Path(sys.argv[sys.argv.index("--spec") + 1])
    spec = JobSpec.load(spec_path)
    request, runtime = spec.request, spec.runtime
    behaviour = request.context.values.get("fake_behaviour") or os.environ.get("GPJOBS_FAKE_BEHAVIOUR", "ok")
    epoch_s = float(os.environ.get("GPJOBS_FAKE_EPOCH_S", "0.5" if behaviour == "slow" else "0.02"))
    work = Path(spec.work_dir)
    ckpt = work / "checkpoint.json"
    threading.Thread(target=watch_lifeline, daemon=True).start()
    if behaviour == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: _terminated.set())

    resumed = json.loads(ckpt.read_text())["epoch"] if runtime.resume and ckpt.exists() else 0
    with open(work / "fake_runs.jsonl", "a") as fh:
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "resumed_from_epoch": resumed,
                    "behaviour": behaviour,
                    "device": runtime.device,
                    "devices": list(runtime.devices),
                    "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "warm": "--warm" in sys.argv,
                    "loader_workers": runtime.loader_workers,
                }
            )
            + "\n"
        )
    print(f"fake trainer {os.getpid()} runs {spec.job_id}", file=sys.stderr, flush=True)
    emit("started", pid=os.getpid(), device=runtime.device, torch="fake", resumed_from_epoch=resumed)

    if behaviour == "bad-input":
        emit(
            "failed",
            exit_code=2,
            text=f"in_folder: {request.in_folders[0].alias} has no "
            "esri_accumulated_stats.json; export the training data again",
            details=["fake detail"],
        )
        return ExitCode.BAD_INPUT
    if behaviour == "oom":
        emit("failed", exit_code=4, text="CUDA out of memory; try a smaller batch_size")
        return ExitCode.OUT_OF_MEMORY
    if behaviour == "hang":
        while True:
            time.sleep(1)
    if behaviour == "no-result":
        return ExitCode.OK

    epochs = request.max_epochs
    last_beat = 0.0
    for epoch in range(resumed + 1, epochs + 1):
        steps = 5
        for step in range(steps):  # "batches": the boundaries where SIGTERM is honoured
            if _terminated.is_set():
                emit("message", level="warning", text=f"Stopped at epoch {epoch}; checkpoint of epoch {epoch - 1} kept")
                return ExitCode.CANCELLED
            if behaviour == "sigkill-self" or (behaviour == "sigkill-once" and epoch == 2 and resumed == 0):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(epoch_s / steps)
            if time.monotonic() - last_beat >= runtime.heartbeat_seconds:
                emit("heartbeat")
                last_beat = time.monotonic()
            done = (epoch - 1 + (step + 1) / steps) / epochs
            emit("progress", percent=round(100 * done * 0.95, 2), phase="train", epoch=epoch, max_epochs=epochs)
        if behaviour == "nan" and epoch >= 1:
            emit("failed", exit_code=3, text="The training loss became NaN at epoch 1; try a lower learning_rate")
            return ExitCode.NAN_LOSS
        if behaviour == "crash":
            emit("message", level="error", text="Traceback: RuntimeError: boom")
            emit("failed", exit_code=1, text="RuntimeError: boom")
            return ExitCode.ERROR
        loss = 1.0 / epoch
        emit(
            "epoch",
            epoch=epoch,
            max_epochs=epochs,
            train_loss=loss,
            valid_loss=loss * 1.1,
            metrics={"accuracy": 1 - loss / 2},
            seconds=epoch_s,
            best=True,
        )
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epoch": epoch}))
        os.replace(tmp, ckpt)
        emit("checkpoint", epoch=epoch)
    if behaviour == "ignore-term":
        while True:
            emit("heartbeat")
            time.sleep(0.2)
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    spec.package_path.write_bytes(b"PK fake dlpk for " + spec.job_id.encode())
    emit("progress", percent=100.0, phase="package", epoch=epochs, max_epochs=epochs)
    emit("result", package=str(spec.package_path), model_type=request.model_type.name, metrics={"accuracy": 0.9})
    return ExitCode.OK


if __name__ == "__main__":
    code = int(main())
    _out.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for the lifeline thread
