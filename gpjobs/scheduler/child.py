"""One training child: a fresh interpreter in its own process group, a stdin lifeline, JSON-lines events.

The server holds the child's stdin open and never writes to it after the start; when the server dies (even by
kill -9) the pipe closes and the child exits (ExitCode.LIFELINE_LOST). `start_new_session=True` puts the child
in its own process group so that one killpg also reaches its DataLoader workers.

A child starts cold (`--spec <path>`: it imports torch after it is spawned for the job) or warm: `WarmTrainer`
keeps one child per slot started ahead with `--warm`, which imports torch, torchvision and the training code,
says so with one `heartbeat` line, and waits for ONE line on stdin, the handoff
`{"spec": <spec path>, "log": <log path>}`; then it moves its stderr to that log, its cwd to the job's work
folder, and runs the job exactly as a cold child would. Every job gets a child no job used before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import structlog

from gpjobs.config import slot_devices
from gpjobs.training.protocol import decode_event

log = structlog.get_logger("gpjobs.scheduler")

EVENT_LINE_LIMIT = 16 * 1024 * 1024  # a result event carries the whole .emd


def child_env(device: str, threads: int) -> dict[str, str]:
    """The child's environment: its slot's GPUs ("cuda:2+cuda:3" -> CUDA_VISIBLE_DEVICES=2,3; the child sees
    them as cuda:0 and cuda:1), and one BLAS/OpenMP pool of `threads` threads per training process."""
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(d.split(":", 1)[1] for d in slot_devices(device) if d.startswith("cuda:"))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _start(
    command: list[str], args: list[str], *, device: str, threads: int, log_path: Path, cwd: Path
) -> asyncio.subprocess.Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child inherits the descriptor; we can close ours
        return await asyncio.create_subprocess_exec(
            *command,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            start_new_session=True,
            env=child_env(device, threads),
            limit=EVENT_LINE_LIMIT,
            cwd=str(cwd),
        )


class ChildProcess:
    """A running child and the few things the supervisor does to it."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.signals_sent: list[int] = []

    @classmethod
    async def spawn(
        cls, command: list[str], spec_path: Path, *, device: str, threads: int, log_path: Path
    ) -> ChildProcess:
        """A cold child for this one spec."""
        proc = await _start(
            command, ["--spec", str(spec_path)], device=device, threads=threads, log_path=log_path, cwd=spec_path.parent
        )
        return cls(proc, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events until the child closes stdout; stray lines are ignored (they go to the log anyway)."""
        assert self.proc.stdout is not None
        while True:
            try:
                line = await self.proc.stdout.readline()
            except ValueError:  # a line over the limit: skip it rather than lose the whole stream
                continue
            if not line:
                return
            event = decode_event(line)
            if event is not None:
                yield event

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the child's whole process group (its DataLoader workers too)."""
        self.signals_sent.append(sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def wait(self) -> int:
        rc = await self.proc.wait()
        self.close_lifeline()
        # Anything the child left in its group (workers) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return rc

    def close_lifeline(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()

    def stderr_tail(self, max_bytes: int = 2000) -> str:
        """The end of the child's log, for a failure message when the child could not say why."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                return fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""


def runs_job(pid: int, job_id: str) -> bool:
    """Whether process `pid` is a child of this job: the job id is on its command line (a cold child's spec
    path, jobs/<job_id>/spec.json) or in its working directory (every child works in jobs/<job_id>)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return False
    if job_id in cmdline:
        return True
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).name == job_id
    except OSError:
        return False


def kill_stray_group(pid: int | None, job_id: str) -> bool:
    """Kill a child group left by an earlier boot, only if that pid still runs this job's child (the pid
    may have been reused since: `runs_job`)."""
    if not pid or not runs_job(pid, job_id):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
        return True
    return False


class WarmTrainer:
    """One slot's ready child: started ahead, handed the next job, replaced once that job's child has exited.

    An idle warm child holds only its imports (and, on a GPU slot, its CUDA context); it reads nothing but
    the handoff line, so when the server goes away its stdin closes and it exits like any child. The
    replacement starts after the job, not beside it: a slot never has more than one torch process, and a
    running job never shares its CPUs with an import.
    """

    def __init__(self, command: list[str], *, device: str, threads: int, log_path: Path, cwd: Path) -> None:
        self.command, self.device, self.threads = command, device, threads
        self.log_path, self.cwd = log_path, cwd  # the idle child's stderr (its import warnings) and folder
        self._proc: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Task | None = None
        self._closed = False

    async def start(self) -> None:
        """Start the slot's warm child unless one is alive (or the trainer is closed)."""
        if self._closed or (self._proc is not None and self._proc.returncode is None):
            return
        self.cwd.mkdir(parents=True, exist_ok=True)
        self._proc = await _start(
            self.command, ["--warm"], device=self.device, threads=self.threads, log_path=self.log_path, cwd=self.cwd
        )
        self._ready = asyncio.create_task(self._watch_ready(self._proc, time.monotonic()))

    async def _watch_ready(self, proc: asyncio.subprocess.Process, started: float) -> None:
        """Log when the child has its imports (its first line); the line is consumed, nothing else is."""
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if line:
            log.info(
                "warm trainer ready", device=self.device, pid=proc.pid, import_s=round(time.monotonic() - started, 2)
            )

    async def take(self, spec_path: Path, log_path: Path) -> ChildProcess | None:
        """Hand the job `spec_path` to the warm child (None when there is none alive: spawn cold). Call
        `start()` once the job's child has exited for the next job's."""
        proc, ready = self._proc, self._ready
        self._proc = self._ready = None
        if ready is not None and not ready.done():
            ready.cancel()  # the supervisor reads the child's stdout from here on
            with contextlib.suppress(asyncio.CancelledError):
                await ready
        child = None
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                proc.stdin.write(orjson.dumps({"spec": str(spec_path), "log": str(log_path)}) + b"\n")
                await proc.stdin.drain()
                child = ChildProcess(proc, log_path)
            except (BrokenPipeError, ConnectionResetError):
                child = None
        if child is None and proc is not None:
            await _discard(proc)
        return child

    async def close(self) -> None:
        """Stop the idle child (its lifeline closes; its group is killed after a moment)."""
        self._closed = True
        proc, self._proc = self._proc, None
        if self._ready is not None:
            self._ready.cancel()
        if proc is not None:
            await _discard(proc)


async def _discard(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), 2.0)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
