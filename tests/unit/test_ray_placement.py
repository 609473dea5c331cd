"""The Ray pool's answer for a job no node can hold: fail at once saying why (no node ever had the shape), or a
lost attempt with the reason (the nodes that had it left), never a bare "signal 9"; and which warm actor a job
is handed to. No cluster needed."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gpjobs.config import load_config
from gpjobs.scheduler.retry import Outcome, classify
from gpjobs.training.protocol import ExitCode

pytest.importorskip("ray", reason="the Ray pool needs the ray extra: pip install 'gpjobs[ray]'")
from gpjobs.scheduler.ray_pool import RayPool  # noqa: E402


def _node(address: str, cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    return {"NodeManagerAddress": address, "Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus}}


def _pool(tmp_path, nodes: list[dict], shape: str = "cuda:0") -> RayPool:
    config = load_config(
        overrides={"pool": "ray", "devices": [shape], "ray_address": "10.0.0.1:6379", "data_dir": str(tmp_path)},
        env={},
    )
    pool = RayPool(config)
    pool._nodes = nodes
    pool._fitting = sum(pool.fits(n["Resources"]) for n in nodes if n["Alive"])
    return pool


def _events(child) -> list[dict]:
    async def collect() -> list[dict]:
        return [event async for event in child.events()]

    return asyncio.run(collect())


def test_a_gpu_shape_on_a_cluster_without_gpus_fails_now_with_the_fix(tmp_path):
    pool = _pool(tmp_path, [_node("10.0.0.11", 16)])
    assert pool.slot_devices() == ["cuda:0"]  # one slot, so that queued jobs are claimed and say why
    child = pool.placement_refusal()
    assert child is not None and child.returncode == ExitCode.BAD_INPUT
    [failed] = _events(child)
    assert failed["exit_code"] == ExitCode.BAD_INPUT
    assert failed["text"].startswith("Ray cannot place the job: each job asks for 1 CPUs and 1 GPUs")
    assert "10.0.0.11: 16 CPUs, 0 GPUs" in failed["text"] and "--num-gpus" in failed["text"]
    assert classify(child.returncode, published=False, stop_reason=None, reported=failed["exit_code"]) == (
        Outcome.FAILED
    )


def test_a_gpu_node_that_left_is_a_lost_attempt_with_that_reason(tmp_path):
    pool = _pool(tmp_path, [_node("10.0.0.11", 16), _node("10.0.0.12", 8, 1, alive=False)])
    child = pool.placement_refusal()
    assert child is not None
    [failed] = _events(child)
    assert failed["lost_reason"].startswith("the Ray node(s) that had 1 CPUs and 1 GPUs left the cluster")
    assert classify(child.returncode, published=False, stop_reason=None, reported=failed["exit_code"]) == (Outcome.LOST)


def test_a_cluster_with_room_places_and_an_empty_one_has_no_slot(tmp_path):
    pool = _pool(tmp_path, [_node("10.0.0.11", 16, 2)])
    assert pool.placement_refusal() is None and pool.slot_devices() == ["cuda:0", "cuda:0"]
    assert _pool(tmp_path, []).slot_devices() == []


class _FakeActor:
    """Stands in for a TrainingActor handle: `handoff.remote(...)` answers like the actor's method."""

    def __init__(self, pid: int) -> None:
        self.pid, self.handed = pid, []
        self.handoff = self

    async def remote(self, spec: str, log: str) -> dict:
        self.handed.append(spec)
        return {"pid": self.pid, "node": "10.0.0.11"}


def test_the_job_goes_to_the_first_warm_actor_ready_and_none_ready_in_time_is_lost(tmp_path):
    from gpjobs.scheduler.ray_pool import _WarmActor

    async def scenario() -> tuple:
        pool = _pool(tmp_path, [_node("10.0.0.11", 4)], shape="cpu")
        pool.config = dataclasses.replace(pool.config, heartbeat_timeout_s=0.3)
        loop = asyncio.get_running_loop()
        slow, fast = _FakeActor(11), _FakeActor(12)
        pending, ready = loop.create_future(), loop.create_future()
        pool._warm = [_WarmActor(slow, pending), _WarmActor(fast, ready)]
        loop.call_later(0.05, ready.set_result, {"pid": 12})
        child = await pool._take_warm(tmp_path / "a" / "spec.json", tmp_path / "a.log")
        # the slow one is still placing (Ray has no room for it): the next job waits, then is lost saying so
        lost = await pool._take_warm(tmp_path / "b" / "spec.json", tmp_path / "b.log")
        pending.cancel()
        return child, fast, slow, lost

    child, fast, slow, lost = asyncio.run(scenario())
    assert child.pid == 12 and fast.handed == [str(tmp_path / "a" / "spec.json")] and slow.handed == []
    [failed] = _events(lost)
    assert failed["lost_reason"].startswith("Ray had no node with 1 CPUs and 0 GPUs free for 0 s")


def test_two_jobs_at_once_each_get_a_warm_actor_even_if_the_resources_are_reread_meanwhile(tmp_path):
    # Two jobs claimed together while the slots' warm actors still import: a resource refresh between them
    # once counted the waiting jobs' slots twice and dropped a warm actor, so both jobs started cold.
    from gpjobs.scheduler.ray_pool import _WarmActor

    async def scenario() -> tuple:
        pool = _pool(tmp_path, [_node("10.0.0.11", 2)], shape="cpu")
        loop = asyncio.get_running_loop()
        first, second = _FakeActor(21), _FakeActor(22)
        futures = [loop.create_future(), loop.create_future()]
        pool._warm = [_WarmActor(first, futures[0]), _WarmActor(second, futures[1])]
        jobs = [asyncio.ensure_future(pool._take_warm(tmp_path / j / "spec.json", tmp_path / f"{j}.log")) for j in "ab"]
        await asyncio.sleep(0.01)
        pool._keep_warm()  # the periodic refresh, while both jobs wait
        for future in futures:
            future.set_result({"pid": 0})
        children = await asyncio.gather(*jobs)
        pool._keep_warm()
        return children, pool

    children, pool = asyncio.run(scenario())
    assert sorted(child.pid for child in children) == [21, 22]
    assert pool._running == 2 and pool._warm == []
