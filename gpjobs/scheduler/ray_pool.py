"""`pool = "ray"`: training children on a Ray cluster (pip install 'gpjobs[ray]'). Imported only when configured.

The scheduler keeps the queue and every status change in SQLite, as with the local pool; Ray only places
children. Each attempt gets its own `TrainingActor` (scheduler/ray_actor.py), created with the job's resources
(`num_gpus` = the GPUs of the `devices` shape, `num_cpus` = ray_cpus_per_job or child_threads per device). With
warm_trainers (the default) that actor was placed ahead, while its slot was idle, and its child has already
imported torch and the training code (`trainer_command --warm`, the local pool's warm protocol): the job is
handed to it. Else the actor is placed for the job and starts a cold child (`trainer_command --spec
<work_dir>/spec.json`). Either way the actor runs the same training child as the local pool on its node and
hands the child's stdout to the server one JSON line per call: the events travel as the return values of actor
calls, which Ray already carries, orders and fails loudly (a dead actor raises on the pending call). That is the
simplest channel that stays correct when a node dies: no queue actor to keep alive beside it, no log file to
tail over a network filesystem. The actor's pipe is also the child's stdin lifeline, and the child asks Linux to
kill it with its parent, so a killed actor (cancel, a killed worker, a lost node) leaves no child behind; the
server sees a lost child and retries the job from its checkpoint.

Job folders, checkpoints and outputs stay where the server puts them (jobs_dir): that folder, the file shares
and weights_dir must be on storage every node mounts at the same path (docs/deploy.md). Slots come from the
cluster: per alive node, how many job shapes fit its CPUs and GPUs. A job that no node of the cluster can
hold fails at once saying so (Ray itself would keep it pending forever); one whose nodes left is lost and
retried, with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import ray
import structlog
from ray.exceptions import RayError

from gpjobs import messages as texts
from gpjobs.config import Config, slot_devices
from gpjobs.scheduler.pool import Child, Pool
from gpjobs.scheduler.ray_actor import TrainingActor, kill_actor
from gpjobs.training.protocol import ExitCode, decode_event

log = structlog.get_logger("gpjobs.scheduler")

NAMESPACE = "gpjobs"
RESOURCES_REFRESH_S = 5.0  # how often the slot count follows the cluster
LOST = -int(signal.SIGKILL)  # the exit status of a child whose actor (worker, node) died under it


class RayChild:
    """A training child inside a TrainingActor, driven like a local ChildProcess."""

    def __init__(self, actor: Any, pid: int, log_path: Path, node: str = "") -> None:
        self.actor, self.pid, self.log_path, self.node = actor, pid, log_path, node
        self.signals_sent: list[int] = []
        self.on_exit: Callable[[], None] | None = None  # the pool's: the slot's actor is gone
        self._returncode: int | None = None
        self._news: list[dict[str, Any]] = []  # events the server itself adds (why the actor was lost)

    @classmethod
    def refused(cls, actor: Any, log_path: Path, code: ExitCode, text: str) -> RayChild:
        """A child that never started: it reports `text` as its failure and `code` as its exit status."""
        child = cls(actor, 0, log_path)
        child._news.append({"type": "failed", "exit_code": int(code), "text": text, "details": []})
        child._returncode = int(code)
        return child

    @classmethod
    def lost_at_start(cls, actor: Any, log_path: Path, why: str) -> RayChild:
        """A child that never started for a reason that may pass (no room, a node gone): a lost attempt."""
        child = cls(actor, 0, log_path)
        child._news.append({"type": "failed", "exit_code": LOST, "text": why, "lost_reason": why, "details": []})
        child._returncode = LOST
        return child

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        for news in self._news:
            yield news
        if self._returncode is not None:
            return
        while True:
            try:
                line = await self.actor.read.remote()
            except RayError as exc:
                self._lost(exc)
                yield self._news[-1]
                return
            if line is None:
                return
            event = decode_event(line)
            if event is not None:
                yield event

    def _lost(self, exc: BaseException) -> None:
        text = texts.ray_worker_lost(exc, self.node)
        if not any(e.get("text") == text for e in self._news):
            self._news.append({"type": "message", "level": "warning", "text": text})

    def signal_group(self, sig: int) -> None:
        self.signals_sent.append(sig)
        if self._returncode is not None:
            return
        self.actor.signal.remote(sig)  # fire and forget: a dead actor has no child left to signal
        if sig == signal.SIGKILL:
            asyncio.get_running_loop().call_later(2.0, kill_actor, self.actor)  # the child first, then its actor

    async def wait(self) -> int:
        try:
            if self._returncode is None:
                try:
                    self._returncode = int(await self.actor.wait.remote())
                except RayError as exc:
                    self._lost(exc)
                    self._returncode = LOST
        finally:
            kill_actor(self.actor)  # its resources go back to the cluster now, not when Ray notices
            on_exit, self.on_exit = self.on_exit, None
            if on_exit is not None:
                on_exit()
        return self._returncode

    def stderr_tail(self, max_bytes: int = 2000) -> str:
        """The end of the child's log (jobs_dir is on storage this server sees too)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - max_bytes))
                return fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""


class _WarmActor:
    """An idle slot's TrainingActor and the call that starts its warm child (placement, then imports)."""

    def __init__(self, actor: Any, ready: asyncio.Future) -> None:
        self.actor, self.ready = actor, ready

    @property
    def usable(self) -> bool:
        """Not known to be broken (ready, or still getting there)."""
        return not self.ready.done() or (not self.ready.cancelled() and self.ready.exception() is None)

    def discard(self) -> None:
        if self.ready.done() and not self.ready.cancelled():
            self.ready.exception()  # retrieved: a broken warm-up is logged where it is used, not at exit
        self.ready.cancel()
        kill_actor(self.actor)


class RayPool(Pool):
    """Slots = job shapes the alive Ray nodes have room for; each attempt = one TrainingActor.

    With warm_trainers (the default), every idle slot keeps a placed actor whose child has torch imported, as
    the local pool's WarmTrainer does on this machine: a job starts without waiting for a worker process and
    the imports. The actor still goes with its job (cancel, kill and a lost node behave as for a cold one);
    the slot's next warm actor is placed once it has gone, since the resources it asks for are the slot's."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        [self.shape] = config.devices  # validated: one entry, the devices one job gets on a node
        self.gpus = sum(1 for d in slot_devices(self.shape) if d.startswith("cuda"))
        ranks = len(slot_devices(self.shape))
        self.cpus = config.ray_cpus_per_job or float(config.child_threads * ranks)
        self._nodes: list[dict[str, Any]] = []
        self._fitting = 0  # jobs of this shape the alive nodes hold
        self._running = 0  # slots whose actor a job holds (taken warm, or placed cold), until it is waited for
        self._warm: list[_WarmActor] = []
        self._warm_serial = 0
        self._refresher: asyncio.Task | None = None
        self._closed = False

    @property
    def ask(self) -> str:
        """What one job asks Ray for, in words."""
        return f"{self.cpus:g} CPUs and {self.gpus} GPUs"

    async def start(self) -> None:
        await asyncio.to_thread(
            ray.init,
            address=self.config.ray_address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
        await self._refresh()
        log.info(
            "ray pool",
            address=self.config.ray_address,
            slots=self._fitting,
            job_cpus=self.cpus,
            job_gpus=self.gpus,
            warm=self.config.warm_trainers,
        )
        self._refresher = asyncio.create_task(self._refresh_periodically(), name="gpjobs-ray-resources")

    async def close(self) -> None:
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        for warm in self._warm:
            warm.discard()
        self._warm.clear()
        if ray.is_initialized():
            await asyncio.to_thread(ray.shutdown)

    def slot_devices(self) -> list[str]:
        # A cluster that is up but has no node for this shape still gets one slot: its jobs are claimed and
        # fail saying why (spawn), rather than wait in the queue for a node nobody will add.
        alive = any(node.get("Alive") for node in self._nodes)
        return [self.shape] * (self._fitting or (1 if alive else 0))

    def slot_cpus(self, device: str, machine_cpus: int) -> int:
        return max(1, int(self.cpus))

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(RESOURCES_REFRESH_S)
            try:
                await self._refresh()
            except Exception:  # the cluster is briefly unreachable: keep the last count
                log.exception("ray resources not read")

    async def _refresh(self) -> None:
        self._nodes = await asyncio.to_thread(ray.nodes)
        self._fitting = sum(self.fits(node.get("Resources") or {}) for node in self._nodes if node.get("Alive"))
        self._keep_warm()

    def fits(self, resources: dict[str, float]) -> int:
        """How many jobs of this shape one node's resources hold."""
        counts = [math.floor(resources.get("CPU", 0.0) / self.cpus + 1e-9)] if self.cpus > 0 else []
        if self.gpus:
            counts.append(math.floor(resources.get("GPU", 0.0) / self.gpus + 1e-9))
        return max(0, min(counts)) if counts else 0

    def placement_refusal(self) -> RayChild | None:
        """When no alive node has this shape at all: a failure (no node ever had it: the config asks for what
        the cluster lacks) or a lost attempt (the nodes that had it are gone; they may come back)."""
        if self._fitting:
            return None
        alive = [node for node in self._nodes if node.get("Alive")]
        nodes = describe_nodes(alive)
        log_path = self.config.data_dir / "logs" / "ray-placement.log"
        if any(self.fits(node.get("Resources") or {}) for node in self._nodes):
            return RayChild.lost_at_start(None, log_path, texts.ray_node_gone(self.ask, nodes))
        refusal = texts.ray_cannot_place(self.ask, nodes, self.config.ray_address)
        return RayChild.refused(None, log_path, ExitCode.BAD_INPUT, refusal)

    # --- warm actors -----------------------------------------------------------------------------------

    def _keep_warm(self) -> None:
        """One warm actor per idle slot (fewer when the cluster shrank: the extra ones go)."""
        if self._closed or not self.config.warm_trainers:
            return
        for broken in [w for w in self._warm if not w.usable]:
            broken.discard()
            self._warm.remove(broken)
        while self._warm and len(self._warm) + self._running > self._fitting:
            self._warm.pop().discard()
        while len(self._warm) + self._running < self._fitting:
            self._warm_serial += 1
            actor = TrainingActor.options(num_cpus=self.cpus, num_gpus=self.gpus).remote()  # type: ignore[attr-defined]
            log_path = self.config.data_dir / "logs" / f"ray-warm-{self._warm_serial}.log"
            self._warm.append(_WarmActor(actor, asyncio.ensure_future(self._warm_up(actor, log_path))))

    async def _warm_up(self, actor: Any, log_path: Path) -> dict[str, Any]:
        info = await actor.warm.remote(list(self.config.trainer_command), str(log_path), self.config.child_threads)
        log.info("warm trainer ready", pool="ray", node=info.get("node"), import_s=round(info["import_s"], 2))
        return info

    async def _take_warm(self, spec_path: Path, log_path: Path) -> RayChild | None:
        """Hand the job to a warm actor, the first one ready; None when there is none (then: a cold actor).
        Their slots' resources are held for them, so waiting for one beats placing another actor; none
        ready within heartbeat_timeout_s (Ray found no room for them) is a lost attempt, as for a cold one."""
        started = time.monotonic()
        while True:
            for broken in [w for w in self._warm if not w.usable]:
                broken.discard()
                self._warm.remove(broken)
            if not self._warm:
                return None
            ready = next((w for w in self._warm if w.ready.done()), None)
            if ready is None:
                left = self.config.heartbeat_timeout_s - (time.monotonic() - started)
                if left <= 0:
                    return RayChild.lost_at_start(
                        None, log_path, texts.ray_no_room(self.ask, time.monotonic() - started)
                    )
                await asyncio.wait([w.ready for w in self._warm], timeout=left, return_when=asyncio.FIRST_COMPLETED)
                continue
            # Taken and counted at once (no wait between): a refresh meanwhile sees the slot's actor once, and
            # a job still waiting here counts none, so no warm actor is placed or dropped for either.
            self._warm.remove(ready)
            self._running += 1
            try:
                info = await ready.actor.handoff.remote(str(spec_path), str(log_path))
            except RayError as exc:
                log.warning("warm ray actor lost before its job", error=f"{type(exc).__name__}: {exc}")
                self._running -= 1
                ready.discard()
                continue
            if "error" in info:
                return RayChild.refused(ready.actor, log_path, ExitCode.BAD_INPUT, str(info["error"]))
            return RayChild(ready.actor, int(info["pid"]), log_path, str(info.get("node") or ""))

    # --- a job's child -----------------------------------------------------------------------------------

    async def spawn(self, spec_path: Path, *, device: str, log_path: Path) -> Child:
        with contextlib.suppress(Exception):  # an unreachable cluster: the placement below says so
            await self._refresh()
        refused = self.placement_refusal()
        if refused is not None:
            return refused
        child = await self._take_warm(spec_path, log_path)
        if child is None:
            self._running += 1  # with the actor _cold places at once (no wait between)
            try:
                child = await self._cold(spec_path, log_path)
            except BaseException:
                self._running -= 1
                raise
        if child.actor is not None:  # it holds a slot's actor (counted in _running) until it is waited for
            child.on_exit = self._child_gone
        return child

    def _child_gone(self) -> None:
        self._running = max(0, self._running - 1)
        self._keep_warm()  # the slot's next warm actor, now that the job's actor is going

    async def _cold(self, spec_path: Path, log_path: Path) -> RayChild:
        # mypy keeps a decorated class's own type; @ray.remote has made TrainingActor an ActorClass
        actor = TrainingActor.options(num_cpus=self.cpus, num_gpus=self.gpus).remote()  # type: ignore[attr-defined]
        started = time.monotonic()
        try:
            # Placing the actor waits for room; a cluster that has none for this long is a lost attempt.
            info = await asyncio.wait_for(
                actor.start.remote(
                    list(self.config.trainer_command), str(spec_path), str(log_path), self.config.child_threads
                ),
                timeout=self.config.heartbeat_timeout_s,
            )
        except (TimeoutError, RayError) as exc:
            kill_actor(actor)
            why = (
                texts.ray_no_room(self.ask, time.monotonic() - started)
                if isinstance(exc, TimeoutError)
                else texts.ray_actor_failed(exc)
            )
            return RayChild.lost_at_start(actor, log_path, why)
        if "error" in info:
            return RayChild.refused(actor, log_path, ExitCode.BAD_INPUT, str(info["error"]))
        return RayChild(actor, int(info["pid"]), log_path, str(info.get("node") or ""))


def describe_nodes(nodes: list[dict[str, Any]]) -> str:
    """'127.0.0.1: 2 CPUs, 0 GPUs; ...' for the nodes given (alive ones), or 'no alive node'."""
    parts = []
    for node in nodes:
        resources = node.get("Resources") or {}
        where = node.get("NodeManagerAddress") or node.get("NodeID") or "?"
        parts.append(f"{where}: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
    return "; ".join(parts) or "no alive node"
