"""The Ray actor that runs a training child on a cluster node (scheduler/ray_pool.py drives it).

Ray pickles this class by reference, so every node imports it from here: gpjobs must be importable by the
Python that `ray start` runs (docs/deploy.md). Imported only with `pool = "ray"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import ray

from gpjobs import messages as texts
from gpjobs.scheduler.child import EVENT_LINE_LIMIT, child_env
from gpjobs.training.events import DIE_WITH_PARENT_ENV


@ray.remote(max_restarts=0, max_task_retries=0)
class TrainingActor:
    """Runs one attempt's training child on its Ray node; the server pulls the child's stdout from it.

    A cold actor starts the child for its job (`start`); a warm one starts it ahead (`warm`: torch and the
    training code imported, the local pool's warm protocol) and hands it the job when one comes (`handoff`)."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()

    async def start(self, command: list[str], spec_path: str, log_path: str, threads: int) -> dict[str, Any]:
        """Start a cold child on `spec_path`; {"pid", "node"}, or {"error": why} when this node cannot run it."""
        refused = not_visible(spec_path)
        if refused:
            return refused
        self.proc = await spawn_child(command, ["--spec", spec_path], log_path, threads, os.path.dirname(spec_path))
        return {"pid": self.proc.pid, "node": ray.util.get_node_ip_address()}

    async def warm(self, command: list[str], log_path: str, threads: int) -> dict[str, Any]:
        """Start a warm child and return once its imports are done (its one heartbeat line): {"pid", "node",
        "import_s"}."""
        started = time.monotonic()
        self.proc = await spawn_child(command, ["--warm"], log_path, threads, os.path.dirname(log_path))
        assert self.proc.stdout is not None
        if not await self.proc.stdout.readline():
            raise RuntimeError(f"the warm training child exited ({await self.proc.wait()}); see {log_path}")
        self._ready.set()
        return {"pid": self.proc.pid, "node": ray.util.get_node_ip_address(), "import_s": time.monotonic() - started}

    async def handoff(self, spec_path: str, log_path: str) -> dict[str, Any]:
        """Give the warm child its job (the warm protocol's one line); answers as `start`."""
        refused = not_visible(spec_path)
        if refused:
            return refused
        await self._ready.wait()  # its heartbeat line is read before the job's events are
        assert self.proc is not None and self.proc.stdin is not None
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        self.proc.stdin.write(json.dumps({"spec": spec_path, "log": log_path}).encode() + b"\n")
        await self.proc.stdin.drain()
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


def not_visible(spec_path: str) -> dict[str, str] | None:
    """{"error": why} when the job folder is not on this node's storage."""
    if os.path.isfile(spec_path):
        return None
    return {"error": texts.ray_storage_not_visible(os.path.dirname(spec_path), ray.util.get_node_ip_address())}


async def spawn_child(
    command: list[str], args: list[str], log_path: str, threads: int, cwd: str
) -> asyncio.subprocess.Process:
    """The training child on this node: in its own process group, killed with the actor (DIE_WITH_PARENT)."""
    if command[1:3] == ["-m", "gpjobs.training"] and not os.path.exists(command[0]):
        command = [sys.executable, *command[1:]]  # the server's interpreter path differs on this node
    env = child_env("cpu", threads)  # GPUs: Ray has already set CUDA_VISIBLE_DEVICES for this actor
    env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    env[DIE_WITH_PARENT_ENV] = "1"
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(cwd).mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return await asyncio.create_subprocess_exec(
            *command,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            env=env,
            limit=EVENT_LINE_LIMIT,
            cwd=cwd,
        )


def kill_actor(actor: Any) -> None:
    """Kill a TrainingActor (and so its child); one already gone, or none, is fine."""
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
