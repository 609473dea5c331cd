"""Building a training child's input: the JobSpec file it reads, written into the job's work folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gpjobs.config import Config
from gpjobs.domain import Job
from gpjobs.store import Store
from gpjobs.tasks.train import TrainingRequest
from gpjobs.training.protocol import ChildRuntime, JobSpec


class BadJob(Exception):
    """The job cannot even start (e.g. its pretrained item is gone): Failed without retry."""


def work_dir(config: Config, job_id: str) -> Path:
    """A job's work folder: its spec, checkpoints, logs and scratch (job ids are validated: no user path)."""
    assert config.jobs_dir is not None
    return config.jobs_dir / job_id


class ChildInput:
    """What one attempt's child is given: the spec file (the device travels in its environment, see child.py)."""

    def __init__(self, store: Store, config: Config, job: Job, device: str) -> None:
        self.store = store
        self.config = config
        self.job = job
        self.device = device

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
            request = TrainingRequest.from_json_dict(self.job.spec)
        except ValueError as exc:
            raise BadJob(f"This job cannot run on this server version: {exc}. Submit it again.") from None
        pretrained = request.pretrained
        if pretrained is not None and pretrained.item_id:
            item = await self.store.get_item(pretrained.item_id)  # the item may be gone or replaced since submit
            if item is None or not Path(item.path).is_file():
                raise BadJob(f"pretrained_model: item {pretrained.item_id} no longer exists; "
                             "submit again with an existing model item")
            request = request.replace(pretrained=dataclasses.replace(pretrained, path=item.path))
        runtime = ChildRuntime(
            device="cuda:0" if self.device.startswith("cuda:") else "cpu",  # CUDA_VISIBLE_DEVICES masks the rest
            weights_dir=str(self.config.weights_dir) if self.config.weights_dir else None,
            missing_weights=self.config.missing_weights, num_threads=self.config.child_threads, resume=True,
            heartbeat_seconds=max(0.5, min(5.0, self.config.heartbeat_timeout_s / 4)))
        spec = JobSpec(job_id=self.job_id, work_dir=str(self.work_dir), request=request, runtime=runtime)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / "spec.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(spec.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path
