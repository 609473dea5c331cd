"""Building a training child's input: the JobSpec file it reads, written into the job's work folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gpjobs.config import Config
from gpjobs.domain import Job
from gpjobs.store import Store
from gpjobs.training.protocol import JobSpec


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
        """Write <work_dir>/spec.json atomically and return its path; BadJob when the job cannot run."""
        raw = dict(self.job.spec)
        pretrained = raw.get("pretrained") or {}
        if pretrained.get("item_id") and not raw.get("pretrained_model"):
            item = await self.store.get_item(pretrained["item_id"])
            if item is None or not Path(item.path).is_file():
                raise BadJob(f"pretrained_model: item {pretrained['item_id']} no longer exists; "
                             "submit again with an existing model item")
            raw["pretrained_model"] = item.path
        known = {f.name for f in dataclasses.fields(JobSpec)}
        values = {k: v for k, v in raw.items() if k in known and v is not None}
        values.update(
            job_id=self.job_id, model_type=self.job.model_type, work_dir=str(self.work_dir),
            output_name=str(raw.get("output_name") or (raw.get("output") or {}).get("name") or self.job_id),
            in_folders=list(raw.get("in_folders") or []),
            device="cuda:0" if self.device.startswith("cuda:") else "cpu",  # CUDA_VISIBLE_DEVICES masks the rest
            weights_dir=str(self.config.weights_dir) if self.config.weights_dir else None,
            missing_weights=self.config.missing_weights, num_threads=self.config.child_threads, resume=True,
            heartbeat_seconds=max(0.5, min(5.0, self.config.heartbeat_timeout_s / 4)))
        spec = JobSpec(**values)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / "spec.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(spec.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path
