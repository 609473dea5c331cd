"""Data workers by default: the server's loader_workers setting (auto: from the slot's CPU share and device kind)
fills the child's runtime, a job's num_workers argument overrides it, and the job is told the CPU split."""

from __future__ import annotations

import json

from gpjobs import messages as texts
from gpjobs.domain import Job, JobStatus, new_job_id
from gpjobs.scheduler.child_input import auto_loader_workers, cpu_split, slot_cpus
from tests.fakes.fake_jobs import fake_request

S = JobStatus
TERMINAL = (S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED)


def test_auto_gives_a_gpu_every_spare_core_and_a_cpu_slot_what_its_threads_leave():
    assert slot_cpus(1, cpus=2) == 2 and slot_cpus(4, cpus=32) == 8 and slot_cpus(3, cpus=2) == 1
    assert auto_loader_workers("cuda:0", 8, threads=1) == 7
    assert auto_loader_workers("cuda:0", 64, threads=1) == 8  # capped
    assert auto_loader_workers("cuda:0", 1, threads=1) == 1  # a GPU is never fed from the trainer's thread alone
    assert auto_loader_workers("cpu", 2, threads=1) == 1
    assert auto_loader_workers("cpu", 2, threads=2) == 0  # the trainer's threads use the whole share
    assert auto_loader_workers("cpu", 16, threads=4) == 4  # capped


def test_the_argument_beats_the_setting_which_beats_auto(make_config):
    request = fake_request()
    assert cpu_split(make_config(), "cpu", request, cpus=2).source == "auto"
    assert cpu_split(make_config(loader_workers=3), "cpu", request, cpus=2).workers == 3
    given = request.replace(given_arguments={"num_workers": 0})
    split = cpu_split(make_config(loader_workers=3), "cuda:0", given, cpus=8)
    assert (split.workers, split.source, split.cpus) == (0, "num_workers argument", 8)


async def test_the_child_gets_the_workers_and_the_job_is_told_the_split(make_harness):
    harness = make_harness(loader_workers=3)
    await harness.start()
    job = await harness.submit("ok", max_epochs=1)
    assert (await harness.wait(job.job_id, *TERMINAL)).status is S.SUCCEEDED
    assert harness.runs(job.job_id)[0]["loader_workers"] == 3
    split = cpu_split(harness.config, "cpu", fake_request())
    said = await harness.descriptions(job.job_id)
    assert texts.cpu_split(split.cpus, 1, 3, "loader_workers setting") in said, said

    request = fake_request(max_epochs=1).replace(given_arguments={"num_workers": 2})
    own = Job(
        job_id=new_job_id(),
        owner="alice",
        status=S.SUBMITTED,
        model_type="FEATURE_CLASSIFIER",
        inputs={"output_name": json.dumps({"name": "own"})},
        spec=request.to_json_dict(),
    )
    await harness.store.create_job(own)
    harness.scheduler.submitted()
    assert (await harness.wait(own.job_id, *TERMINAL)).status is S.SUCCEEDED
    assert harness.runs(own.job_id)[0]["loader_workers"] == 2
    assert any(
        m.endswith("(num_workers argument).") and "2 data loader workers" in m
        for m in await harness.descriptions(own.job_id)
    )


def test_the_split_reads_plainly():
    assert texts.cpu_split(2, 1, 1, "auto") == (
        "CPU: 1 training thread and 1 data loader worker, on the slot's share of 2 CPUs (auto)."
    )
    assert "no data loader workers" in texts.cpu_split(1, 1, 0, "auto")
