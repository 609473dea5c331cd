"""Building a training child's input: the JobSpec file it reads, written into the job's work folder."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpjobs.config import Config, slot_devices
from gpjobs.domain import Job
from gpjobs.store import Store
from gpjobs.tasks.inference import InferenceRequest
from gpjobs.tasks.registry import task_named
from gpjobs.tasks.train import TrainingRequest
from gpjobs.training.protocol import ChildRuntime, JobSpec

GPU_MAX_WORKERS = 8  # a GPU slot: the CPU's whole job is to feed the device
CPU_MAX_WORKERS = 4  # a CPU slot: decoding in parallel helps until the trainer's own threads want the cores


@dataclass(frozen=True)
class CpuSplit:
    """How a job's slot spends its CPU share: trainer threads and data loader worker processes."""

    cpus: int  # the slot's share of this machine's CPUs
    threads: int  # torch threads in the training process
    workers: int  # loader worker processes for this job
    source: str  # what decided `workers`: "auto", "loader_workers setting" or "num_workers argument"


def slot_cpus(slots: int, cpus: int | None = None) -> int:
    """The CPUs one of `slots` slots may count on (this process' CPU affinity shared evenly)."""
    total = cpus if cpus is not None else len(os.sched_getaffinity(0))
    return max(1, total // max(1, slots))


def auto_loader_workers(device: str, share: int, threads: int) -> int:
    """`loader_workers = "auto"`: on a GPU slot every core but the trainer's feeds the device (at most
    GPU_MAX_WORKERS); on a CPU slot the cores the trainer's threads leave free decode (at most CPU_MAX_WORKERS)."""
    if device.startswith("cuda"):
        return min(GPU_MAX_WORKERS, max(1, share - 1))
    return min(CPU_MAX_WORKERS, max(0, share - max(1, threads)))


def cpu_split(
    config: Config, device: str, request: TrainingRequest, cpus: int | None = None, share: int | None = None
) -> CpuSplit:
    """The split a job runs with: its num_workers argument, else the server's loader_workers setting. `share`:
    the slot's CPUs when the pool knows them (a Ray job's), else this machine's shared evenly over the slots.
    On a slot of several devices the workers are per rank, from the rank's part of the share."""
    share = share if share is not None else slot_cpus(len(config.devices), cpus)
    threads = config.child_threads
    given = request.given_arguments.get("num_workers")
    if given is not None:
        return CpuSplit(share, threads, int(given), "num_workers argument")
    if config.loader_workers == "auto":
        per_rank = max(1, share // len(slot_devices(device)))
        return CpuSplit(share, threads, auto_loader_workers(device, per_rank, threads), "auto")
    return CpuSplit(share, threads, int(config.loader_workers), "loader_workers setting")


def child_devices(device: str) -> list[str]:
    """The devices a child on a slot of `device` trains on, as it sees them: CUDA_VISIBLE_DEVICES (or Ray)
    shows a slot's GPUs as cuda:0, cuda:1, ...; a cpu slot of two entries runs two cpu ranks."""
    parts = slot_devices(device)
    return [f"cuda:{i}" if part.startswith("cuda") else "cpu" for i, part in enumerate(parts)]


class BadJob(Exception):
    """The job cannot even start (e.g. its pretrained item is gone): Failed without retry."""


def work_dir(config: Config, job_id: str) -> Path:
    """A job's work folder: its spec, checkpoints, logs and scratch (job ids are validated: no user path)."""
    assert config.jobs_dir is not None
    return config.jobs_dir / job_id


class ChildInput:
    """What one attempt's child is given: the spec file (the device travels in its environment, see child.py)."""

    def __init__(self, store: Store, config: Config, job: Job, device: str, pool: Any = None) -> None:
        self.store = store
        self.config = config
        self.job = job
        self.device = device
        self.pool = pool  # scheduler.pool.Pool: knows a slot's CPU share (None: this machine's, evenly)
        self.split: CpuSplit | None = None  # known once the spec is written

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def work_dir(self) -> Path:
        return work_dir(self.config, self.job.job_id)

    async def write_spec(self) -> Path:
        """Write <work_dir>/spec.json atomically and return its path; BadJob when the job cannot run.

        The spec is the job's stored request, unchanged, and how this attempt runs it."""
        try:
            request = task_named(self.job.task).request_from_json(self.job.spec)
        except (KeyError, ValueError) as exc:
            raise BadJob(f"This job cannot run on this server version: {exc}. Submit it again.") from None
        if isinstance(request, InferenceRequest):  # no data loader: the raster function reads its blocks
            request = await self._model_file(request)
        else:
            request = await self._pretrained_file(request)
            share = self.pool.slot_cpus(self.device, len(os.sched_getaffinity(0))) if self.pool is not None else None
            self.split = cpu_split(self.config, self.device, request, share=share)
        devices = child_devices(self.device)
        runtime = ChildRuntime(
            device=devices[0],
            devices=tuple(devices) if len(devices) > 1 else (),
            weights_dir=str(self.config.weights_dir) if self.config.weights_dir else None,
            missing_weights=self.config.missing_weights,
            num_threads=self.config.child_threads,
            resume=True,
            loader_workers=self.split.workers if self.split else 0,
            heartbeat_seconds=max(0.5, min(5.0, self.config.heartbeat_timeout_s / 4)),
        )
        spec = JobSpec(job_id=self.job_id, work_dir=str(self.work_dir), request=request, runtime=runtime)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / "spec.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(spec.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path

    async def _pretrained_file(self, request: TrainingRequest) -> TrainingRequest:
        pretrained = request.pretrained
        if pretrained is not None and pretrained.item_id:
            item = await self.store.get_item(pretrained.item_id)  # the item may be gone or replaced since submit
            if item is None or not Path(item.path).is_file():
                raise BadJob(
                    f"pretrained_model: item {pretrained.item_id} no longer exists; "
                    "submit again with an existing model item"
                )
            request = request.replace(pretrained=dataclasses.replace(pretrained, path=item.path))
        return request

    async def _model_file(self, request: InferenceRequest) -> InferenceRequest:
        """The model item's package as it is now (it may have been replaced or deleted since submit)."""
        model = request.model
        if model.item_id:
            item = await self.store.get_item(model.item_id)
            if item is None or not Path(item.path).is_file():
                raise BadJob(f"model: item {model.item_id} no longer exists; submit again with an existing model")
            request = request.replace(model=dataclasses.replace(model, path=item.path))
        return request
