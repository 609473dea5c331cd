"""Every job message text the server writes (what ArcGIS clients print under a job), in one place.

Constants are texts without values; functions build the texts that carry one. Texts the training child
sends in its events (its warnings, its own failure explanations) stay in the child: the server relays them.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from gpjobs.training.protocol import ExitCode

# --- the life of a job -------------------------------------------------------------------------

SUBMITTED = "Submitted."
EXECUTING = "Executing..."
CANCEL_REQUESTED = "Cancel requested."
CANCEL_COMPLETE = "Cancel complete."
TRAINING_FINISHED = "Training Finished"


def succeeded_at(ms: int) -> str:
    """Esri's 'Succeeded at <time>' line, e.g. 'Succeeded at Wednesday, June 5, 2024 10:01:02 AM' (local time)."""
    t = time.localtime(ms / 1000)
    stamp = time.strftime("%A, %B ", t) + f"{t.tm_mday}, {t.tm_year} " + time.strftime("%I:%M:%S %p", t).lstrip("0")
    return f"Succeeded at {stamp}"


def cpu_split(cpus: int, threads: int, workers: int, source: str) -> str:
    """How the job's slot spends its CPUs: training threads and data loader worker processes."""

    def n(count: int, what: str) -> str:
        return f"{count} {what}{'' if count == 1 else 's'}"

    loader = (
        f"{n(workers, 'data loader worker')}"
        if workers
        else "no data loader workers (the training process reads the chips)"
    )
    return f"CPU: {n(threads, 'training thread')} and {loader}, on the slot's share of {n(cpus, 'CPU')} ({source})."


def package_written(uri: str) -> str:
    return f"Deep Learning Package written to {uri}."


def item_published(*, replaced: bool) -> str:
    verb = "Updating existing" if replaced else "Adding new"
    return f"{verb} Deep Learning Package item to the portal succeeded."


def epoch_line(event: dict[str, Any]) -> str:
    """One per-epoch line, like arcgis.learn's fit table: epoch, losses, metrics, time."""
    parts = [f"Epoch {event.get('epoch')}/{event.get('max_epochs')}"]
    for key in ("train_loss", "valid_loss"):
        if isinstance(event.get(key), (int, float)):
            parts.append(f"{key} {event[key]:.4f}")
    for key, value in (event.get("metrics") or {}).items():
        if isinstance(value, (int, float)):
            parts.append(f"{key} {value:.4f}")
    if isinstance(event.get("seconds"), (int, float)):
        parts.append(f"time {event['seconds']:.1f} s")
    line = ", ".join(parts)
    return line + (" (best so far)" if event.get("best") else "")


# --- resuming: the child's `started` event says which checkpoint it really loaded ------------------


def resumed_from(epoch: int) -> str:
    return f"Resumed training from the checkpoint of epoch {epoch}."


STARTED_OVER = "No checkpoint was saved before the interruption; training starts again from the first epoch."


# --- interruptions and retries -------------------------------------------------------------------


def interrupted_by_shutdown(epoch: int) -> str:
    return (
        f"Interrupted by a server shutdown after epoch {epoch}; the job is queued again and will resume from "
        "its checkpoint."
    )


def interrupted_by_crash(crashes: int, limit: int) -> str:
    """Boot recovery requeued a job whose server died under it. No epoch is named: only the child knows which
    checkpoint reached the disk before the crash (it says so when it starts, see `resumed_from`)."""
    return (
        "Interrupted: the server stopped unexpectedly while the job ran. The job is queued again and resumes "
        f"from its last checkpoint; this does not use an attempt (server crash {crashes} of the {limit} a job "
        "may survive)."
    )


def crash_limit_reached(crashes: int, limit: int) -> str:
    return (
        f"Lost: the server stopped unexpectedly {crashes} times while this job ran, more than the {limit} a job "
        "may survive, so it is not queued again. Check the server log, then submit the job again."
    )


def no_heartbeat(timeout_s: float) -> str:
    return f"no heartbeat from the training process for {timeout_s:g} s"


LIFELINE_LOST = "the training process lost its connection to the server"
PROCESS_LOST = "the training process was lost"


def process_ended(rc: int) -> str:
    return f"the training process was {describe_exit(rc)}"


def lost_retrying(reason: str, epoch: int, delay_s: float, attempt: int, max_attempts: int) -> str:
    return f"Lost: {reason}. Retrying from epoch {epoch} in {delay_s:.0f} s (attempt {attempt} of {max_attempts})."


def lost_attempts_used(reason: str, max_attempts: int) -> str:
    return f"Lost: {reason}; all {max_attempts} attempts used."


# --- endings other than success ------------------------------------------------------------------


def timed_out(max_runtime_s: float) -> str:
    return f"The job ran longer than max_runtime_s ({max_runtime_s:g} s) and was stopped."


NO_PACKAGE = "The training process ended without producing a model package."

FAILURE_HINTS = {
    ExitCode.BAD_INPUT: "the training data or parameters are not usable",
    ExitCode.NAN_LOSS: "training diverged (the loss became NaN or infinite); try a lower learning_rate",
    ExitCode.OUT_OF_MEMORY: "out of memory; try a smaller batch_size or chip_size",
    ExitCode.ERROR: "training failed with an internal error",
}


def training_failed(rc: int | None, log_tail: str) -> str:
    """A child that failed without saying why: its exit, a hint for the exit code, the end of its log."""
    try:
        hint = FAILURE_HINTS.get(ExitCode(rc)) if rc is not None else None
    except ValueError:  # not one of ours (a signal, or None: never started)
        hint = None
    text = f"Training failed ({describe_exit(rc) if rc is not None else 'not started'})"
    text += f": {hint}." if hint else "."
    return text + (f"\n{log_tail}" if log_tail else "")


def supervisor_error(exc: BaseException) -> str:
    return f"Internal server error while supervising the job: {exc}"


def publish_failed(exc: OSError) -> str:
    return f"could not publish the package: {exc}"


def output_refused(package_uri: str, reason: str) -> str:
    return (
        f"The model package was not written to {package_uri}: {reason}. The output_name folder must be a "
        "real folder inside a registered file share when the job finishes; fix it and submit the job again."
    )


def package_missing(package: str) -> str:
    return f"the training child reported package {package} but it does not exist"


def item_exists(name: str, owner: str) -> str:
    return (
        f"an item named {name!r} already exists for user {owner!r}; choose another output_name or submit "
        "with overwrite_model=true"
    )


def describe_exit(rc: int) -> str:
    """'exit code 3' or 'killed by signal 9 (SIGKILL)'."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {-rc} ({name})"
    return f"exit code {rc}"


# --- inference tasks (gpjobs/tasks/inference.py): their own words where training's would mislead --------------


def tool_failed(task: str) -> str:
    """The last line of a failed job, as Esri's tools write it: '<Task> failed.'"""
    return f"{task} failed."


def inference_finished(blocks: int, features: int | None) -> str:
    found = f"; {features} feature{'' if features == 1 else 's'}" if features is not None else ""
    return f"Inference finished: {blocks} block{'' if blocks == 1 else 's'}{found}."


def resumed_blocks(blocks: int) -> str:
    return f"Resumed: {blocks} block{'' if blocks == 1 else 's'} written before the interruption are kept."


BLOCKS_STARTED_OVER = "No block was written before the interruption; inference starts again from the first block."


def output_written(uri: str) -> str:
    return f"Output written to {uri}."


def output_published(item_type: str, *, replaced: bool) -> str:
    verb = "Updating existing" if replaced else "Adding new"
    return f"{verb} {item_type} item to the portal succeeded."


def output_missing(path: str) -> str:
    return f"the inference child reported output {path} but it does not exist"


def output_item_taken(name: str, owner: str) -> str:
    return (
        f"another item named {name!r} already exists for user {owner!r}; choose another output name or give "
        "that item's itemId to replace it"
    )


def output_item_gone(item_id: str) -> str:
    return f"the output item {item_id} was deleted while the job ran; submit again with another output"


def interrupted_inference(by: str) -> str:
    """A shutdown or a lost child: the job runs again and computes only the blocks not yet written."""
    return f"Interrupted by {by}; the job is queued again and keeps the blocks already written."


def lost_retrying_blocks(reason: str, delay_s: float, attempt: int, max_attempts: int) -> str:
    return (
        f"Lost: {reason}. Retrying in {delay_s:.0f} s with the blocks already written (attempt {attempt} of "
        f"{max_attempts})."
    )


# --- the Ray pool ----------------------------------------------------------------------------------


def ray_cannot_place(ask: str, nodes: str, address: str) -> str:
    """A job whose shape no node of the Ray cluster has: it would wait forever, so it fails now."""
    return (
        f"Ray cannot place the job: each job asks for {ask}, and no node of the Ray cluster at {address} has "
        f"that many ({nodes}). Add a node that has them (ray start --address=... --num-cpus=N --num-gpus=N), "
        "or ask for less in the server's config (devices, ray_cpus_per_job, child_threads), then submit the "
        "job again."
    )


def ray_node_gone(ask: str, nodes: str) -> str:
    return f"the Ray node(s) that had {ask} left the cluster; it has {nodes} now"


def ray_no_room(ask: str, waited_s: float) -> str:
    return f"Ray had no node with {ask} free for {waited_s:.0f} s (other work holds them, or a node left the cluster)"


def ray_actor_failed(exc: BaseException) -> str:
    return f"the Ray actor for the job failed to start ({type(exc).__name__}: {exc})"


def ray_worker_lost(exc: BaseException, node: str) -> str:
    return f"the Ray worker running the job was lost ({type(exc).__name__}{' on ' + node if node else ''})"


def ray_storage_not_visible(work_dir: str, node: str) -> str:
    return (
        f"the job folder {work_dir} is not visible on Ray node {node}: mount the storage that holds jobs_dir "
        "(and the file shares and weights_dir) at the same path on every node"
    )
