"""One training child: a fresh interpreter in its own process group, a stdin lifeline, JSON-lines events.

The server holds the child's stdin open and never writes to it; when the server dies (even by kill -9)
the pipe closes and the child exits (ExitCode.LIFELINE_LOST). `start_new_session=True` puts the child in
its own process group so that one killpg also reaches its DataLoader workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gpjobs.training.protocol import decode_event

EVENT_LINE_LIMIT = 16 * 1024 * 1024  # a result event carries the whole .emd


def child_env(device: str, threads: int) -> dict[str, str]:
    """The child's environment: its one device, and one BLAS/OpenMP pool of `threads` threads."""
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1] if device.startswith("cuda:") else ""
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ChildProcess:
    """A running child and the few things the supervisor does to it."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.signals_sent: list[int] = []

    @classmethod
    async def spawn(cls, command: list[str], spec_path: Path, *, device: str, threads: int,
                    log_path: Path) -> ChildProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:  # the child inherits the descriptor; we can close ours
            proc = await asyncio.create_subprocess_exec(
                *command, "--spec", str(spec_path),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True, env=child_env(device, threads), limit=EVENT_LINE_LIMIT,
                cwd=str(spec_path.parent))
        return cls(proc, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

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


def kill_stray_group(pid: int | None, job_id: str) -> bool:
    """Kill a child group left by an earlier boot, only if that pid still runs this job's child.

    The pid may have been reused since, so the job id must appear on its command line (the spec path
    is jobs/<job_id>/spec.json).
    """
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return False
    if job_id not in cmdline:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
        return True
    return False

