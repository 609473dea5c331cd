"""`pool = "ray"`: training children on a Ray cluster (pip install 'gpjobs[ray]'). Imported only when configured.

The scheduler keeps the queue and every status change in SQLite, as with the local pool; Ray only places
children. Each attempt gets its own `TrainingActor`, created with the job's resources (`num_gpus` = the GPUs
of the `devices` shape, `num_cpus` = ray_cpus_per_job or child_threads per device). The actor starts the
same training child as the local pool (`trainer_command --spec <work_dir>/spec.json`) on its node and hands
the child's stdout to the server one JSON line per call: the events travel as the return values of actor
calls, which Ray already carries, orders and fails loudly (a dead actor raises on the pending call). That is
the simplest channel that stays correct when a node dies: no queue actor to keep alive beside it, no log
file to tail over a network filesystem. The actor's pipe is also the child's stdin lifeline, and the child
asks Linux to kill it with its parent, so a killed actor (cancel, a killed worker, a lost node) leaves no
child behind; the server sees a lost child and retries the job from its checkpoint.

Job folders, checkpoints and outputs stay where the server puts them (jobs_dir): that folder, the file shares
and weights_dir must be on storage every node mounts at the same path (docs/deploy.md). Slots come from the
cluster: per alive node, how many job shapes fit its CPUs and GPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ray
import structlog
from ray.exceptions import RayError

from gpjobs.config import Config, slot_devices
from gpjobs.scheduler.child import EVENT_LINE_LIMIT, child_env
from gpjobs.scheduler.pool import Child, Pool
from gpjobs.training.events import DIE_WITH_PARENT_ENV
from gpjobs.training.protocol import ExitCode, decode_event

log = structlog.get_logger("gpjobs.scheduler")

NAMESPACE = "gpjobs"
RESOURCES_REFRESH_S = 5.0  # how often the slot count follows the cluster
LOST = -int(signal.SIGKILL)  # the exit status of a child whose actor (worker, node) died under it


@ray.remote(max_restarts=0, max_task_retries=0)
class TrainingActor:
    """Runs one attempt's training child on its Ray node; the server pulls the child's stdout from it."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, command: list[str], spec_path: str, log_path: str, threads: int) -> dict[str, Any]:
        """Start the child; {"pid", "node"}, or {"error": why} when this node cannot run it."""
        if not os.path.isfile(spec_path):
            return {
                "error": f"the job folder {os.path.dirname(spec_path)} is not visible on Ray node "
                f"{ray.util.get_node_ip_address()}: mount the storage that holds jobs_dir (and the "
                "file shares and weights_dir) at the same path on every node"
            }
        if command[1:3] == ["-m", "gpjobs.training"] and not os.path.exists(command[0]):
            command = [sys.executable, *command[1:]]  # the server's interpreter path differs on this node
        env = child_env("cpu", threads)  # GPUs: Ray has already set CUDA_VISIBLE_DEVICES for this actor
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        env[DIE_WITH_PARENT_ENV] = "1"
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                *command,
                "--spec",
                spec_path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
                env=env,
                limit=EVENT_LINE_LIMIT,
                cwd=os.path.dirname(spec_path),
            )
        return {"pid": self.proc.pid, "node": ray.util.get_node_ip_address()}

    async def read(self) -> bytes | None:
        """The child's next stdout line; None once it closed stdout."""
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            try:
                line = await self.proc.stdout.readline()
            except ValueError:  # a line over the limit: skip it, as the local pool does
                continue
            return line or None

    async def signal(self, sig: int) -> None:
        """Signal the child's process group (its ranks and loader workers too)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    async def wait(self) -> int:
        """The child's exit status, once it exited (anything left in its group is killed)."""
        assert self.proc is not None
        rc = await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return rc


class RayChild:
    """A training child inside a TrainingActor, driven like a local ChildProcess."""

    def __init__(self, actor: Any, pid: int, log_path: Path, node: str = "") -> None:
        self.actor, self.pid, self.log_path, self.node = actor, pid, log_path, node
        self.signals_sent: list[int] = []
        self._returncode: int | None = None
        self._news: list[dict[str, Any]] = []  # events the server itself adds (why the actor was lost)

    @classmethod
    def refused(cls, actor: Any, log_path: Path, code: ExitCode, text: str) -> RayChild:
        """A child that never started: it reports `text` as its failure and `code` as its exit status."""
        child = cls(actor, 0, log_path)
        child._news.append({"type": "failed", "exit_code": int(code), "text": text, "details": []})
        child._returncode = int(code)
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
        text = (
            f"the Ray worker running the job was lost ({type(exc).__name__}{' on ' + self.node if self.node else ''})"
        )
        if not any(e.get("text") == text for e in self._news):
            self._news.append({"type": "message", "level": "warning", "text": text})

    def signal_group(self, sig: int) -> None:
        self.signals_sent.append(sig)
        if self._returncode is not None:
            return
        self.actor.signal.remote(sig)  # fire and forget: a dead actor has no child left to signal
        if sig == signal.SIGKILL:
            asyncio.get_running_loop().call_later(2.0, self._kill_actor)  # the child first, then its actor

    def _kill_actor(self) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)

    async def wait(self) -> int:
        if self._returncode is None:
            try:
                self._returncode = int(await self.actor.wait.remote())
            except RayError as exc:
                self._lost(exc)
                self._returncode = LOST
        self._kill_actor()  # its resources go back to the cluster now, not when Ray notices
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


class RayPool(Pool):
    """Slots = job shapes the alive Ray nodes have room for; each attempt = one TrainingActor."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        [self.shape] = config.devices  # validated: one entry, the devices one job gets on a node
        self.gpus = sum(1 for d in slot_devices(self.shape) if d.startswith("cuda"))
        ranks = len(slot_devices(self.shape))
        self.cpus = config.ray_cpus_per_job or float(config.child_threads * ranks)
        self._slots = 0
        self._refresher: asyncio.Task | None = None

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
        log.info("ray pool", address=self.config.ray_address, slots=self._slots, job_cpus=self.cpus, job_gpus=self.gpus)
        self._refresher = asyncio.create_task(self._refresh_periodically(), name="gpjobs-ray-resources")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if ray.is_initialized():
            await asyncio.to_thread(ray.shutdown)

    def slot_devices(self) -> list[str]:
        return [self.shape] * self._slots

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
        nodes = await asyncio.to_thread(ray.nodes)
        self._slots = sum(self.fits(node.get("Resources") or {}) for node in nodes if node.get("Alive"))

    def fits(self, resources: dict[str, float]) -> int:
        """How many jobs of this shape one node's resources hold."""
        counts = [math.floor(resources.get("CPU", 0.0) / self.cpus + 1e-9)] if self.cpus > 0 else []
        if self.gpus:
            counts.append(math.floor(resources.get("GPU", 0.0) / self.gpus + 1e-9))
        return max(0, min(counts)) if counts else 0

    async def spawn(self, spec_path: Path, *, device: str, log_path: Path) -> Child:
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
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            why = (
                f"Ray found no node with {self.cpus:g} CPUs and {self.gpus} GPUs free within "
                f"{time.monotonic() - started:.0f} s"
                if isinstance(exc, asyncio.TimeoutError)
                else f"the Ray actor for the job failed to start ({type(exc).__name__}: {exc})"
            )
            child = RayChild(actor, 0, log_path)
            child._news.append({"type": "message", "level": "warning", "text": why})
            child._returncode = LOST
            return child
        if "error" in info:
            return RayChild.refused(actor, log_path, ExitCode.BAD_INPUT, str(info["error"]))
        return RayChild(actor, int(info["pid"]), log_path, str(info.get("node") or ""))
