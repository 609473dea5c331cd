"""Scheduler fixtures: a real store file, the fake training child, and helpers to wait on job states."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from gpjobs.domain import Job, JobStatus, new_job_id
from gpjobs.scheduler import Scheduler
from gpjobs.store import Store
from tests.fakes.fake_jobs import fake_request
from tests.harness.app import FAKE_TRAINER_COMMAND, app_config


@pytest.fixture
def make_config(tmp_path):
    def make(**overrides):
        values = {
            "trainer_command": FAKE_TRAINER_COMMAND,
            "heartbeat_timeout_s": 30,
            "cancel_grace_s": 0.5,
            "shutdown_grace_s": 2,
            "progress_flush_s": 0.1,
            "retry_backoff_s": 0,
            "watchdog_interval_s": 3600,
            "max_attempts": 3,
        }
        return app_config(tmp_path, **{**values, **overrides})

    return make


@pytest.fixture
async def store(make_config):
    config = make_config()
    s = await Store.open(config.db_path)
    yield s
    await s.close()


class Harness:
    """A scheduler over a store, plus job helpers."""

    def __init__(self, config, store: Store) -> None:
        self.config, self.store = config, store
        self.scheduler: Scheduler | None = None

    async def start(self, boot_id: str = "boot-1", **kwargs) -> Scheduler:
        self.scheduler = Scheduler(self.config, self.store, boot_id)
        await self.scheduler.start(**kwargs)
        return self.scheduler

    async def submit(
        self,
        behaviour: str = "ok",
        *,
        owner: str = "alice",
        max_epochs: int = 2,
        name: str | None = None,
        output: dict | None = None,
        overwrite: bool = False,
        pretrained_item: str | None = None,
        **fields,
    ) -> Job:
        job_id = new_job_id()
        name = name or f"model_{job_id[-6:]}"
        request = fake_request(
            behaviour,
            name=name,
            max_epochs=max_epochs,
            output=output,
            overwrite=overwrite,
            pretrained_item=pretrained_item,
        )
        job = Job(
            job_id=job_id,
            owner=owner,
            status=JobStatus.SUBMITTED,
            model_type="FEATURE_CLASSIFIER",
            inputs={"output_name": json.dumps({"name": name})},
            spec=request.to_json_dict(),
            max_attempts=fields.pop("max_attempts", self.config.max_attempts),
            **fields,
        )
        job = await self.store.create_job(job, ["Submitted."])
        if self.scheduler is not None:
            self.scheduler.submitted()
        return job

    async def wait(self, job_id: str, *statuses: JobStatus, timeout: float = 20.0) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.store.get_job(job_id)
            if job is not None and job.status in statuses:
                return job
            if time.monotonic() > deadline:
                messages = [m.description for m in await self.store.get_messages(job_id)]
                raise AssertionError(f"job {job_id} is {job.status if job else None}, not {statuses}; {messages}")
            await asyncio.sleep(0.02)

    async def wait_running(self, job_id: str, timeout: float = 20.0):
        """Wait until the job's child has started and sent at least one event."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.scheduler.running(job_id) if self.scheduler else None
            if run is not None and run.supervisor.child is not None and (self.runs(job_id)):
                return run
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} never started")

    async def descriptions(self, job_id: str) -> list[str]:
        return [m.description for m in await self.store.get_messages(job_id)]

    def runs(self, job_id: str) -> list[dict]:
        path = self.config.jobs_dir / job_id / "fake_runs.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
async def harness(make_config, store):
    h = Harness(make_config(), store)
    yield h
    if h.scheduler is not None:
        await h.scheduler.stop(grace_s=0.5)


@pytest.fixture
async def make_harness(make_config, store):
    """A harness with config overrides; its scheduler is stopped at teardown."""
    made: list[Harness] = []

    def make(**overrides) -> Harness:
        h = Harness(make_config(**overrides), store)
        made.append(h)
        return h

    yield make
    for h in made:
        if h.scheduler is not None:
            await h.scheduler.stop(grace_s=0.5)
