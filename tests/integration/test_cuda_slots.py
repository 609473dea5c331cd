"""GPU slots with the fake child (no GPU needed): a `cuda:N` slot shows its child that one GPU only
(CUDA_VISIBLE_DEVICES=N) and tells it to train on cuda:0; two GPU slots take a queued job each; a slot of
several GPUs shows its child all of them and tells it to train on each (one rank per device)."""

from __future__ import annotations

from gpjobs.domain import JobStatus

S = JobStatus
TERMINAL = (S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED)


async def test_a_cuda_slot_shows_its_child_one_gpu_as_cuda_0(make_harness):
    harness = make_harness(devices=["cuda:1"])
    await harness.start()
    job = await harness.submit("ok")
    done = await harness.wait(job.job_id, *TERMINAL)
    assert done.status is S.SUCCEEDED, await harness.descriptions(job.job_id)
    assert done.device == "cuda:1"
    [run] = harness.runs(job.job_id)
    assert run["cuda"] == "1" and run["device"] == "cuda:0"


async def test_two_gpu_slots_take_a_job_each_on_their_own_gpu(make_harness):
    harness = make_harness(devices=["cuda:0", "cuda:1"])
    jobs = [await harness.submit("slow", max_epochs=2) for _ in range(2)]  # queued before the slots open
    await harness.start()
    done = [await harness.wait(job.job_id, *TERMINAL) for job in jobs]
    assert [d.status for d in done] == [S.SUCCEEDED, S.SUCCEEDED]
    assert {d.device for d in done} == {"cuda:0", "cuda:1"}
    runs = [harness.runs(job.job_id)[0] for job in jobs]
    assert sorted(r["cuda"] for r in runs) == ["0", "1"] and {r["device"] for r in runs} == {"cuda:0"}
    for d, r in zip(done, runs):
        assert r["cuda"] == d.device.split(":")[1]  # the child saw the GPU of the slot that ran it


async def test_a_slot_of_two_gpus_trains_one_job_on_both(make_harness):
    harness = make_harness(devices=["cuda:2+cuda:3", "cpu+cpu"])
    jobs = [await harness.submit("slow", max_epochs=2) for _ in range(2)]
    await harness.start()
    done = [await harness.wait(job.job_id, *TERMINAL) for job in jobs]
    assert [d.status for d in done] == [S.SUCCEEDED, S.SUCCEEDED]
    runs = {d.device: harness.runs(d.job_id)[0] for d in done}
    assert runs["cuda:2+cuda:3"]["cuda"] == "2,3"
    assert runs["cuda:2+cuda:3"]["devices"] == ["cuda:0", "cuda:1"] and runs["cuda:2+cuda:3"]["device"] == "cuda:0"
    assert runs["cpu+cpu"]["devices"] == ["cpu", "cpu"] and runs["cpu+cpu"]["cuda"] == ""
