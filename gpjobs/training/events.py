"""Reporting from a training run: JSON-lines events for the server, or readable lines for `gpjobs train`.

The child keeps the real stdout for events only (everything printed goes to stderr), heartbeats from a
thread, turns SIGTERM into a cancel request honoured at the next batch boundary, and watches its stdin
lifeline: EOF means the server is gone, and the run stops at the next batch boundary.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any

from gpjobs.training.protocol import ExitCode, encode_event


class StopRequested(Exception):
    """Training must stop now: cancelled (SIGTERM) or the server's lifeline closed."""

    def __init__(self, exit_code: ExitCode, text: str) -> None:
        super().__init__(text)
        self.exit_code = exit_code


def format_epoch(event: dict[str, Any]) -> str:
    """`Epoch 3/10: train_loss 0.4100 valid_loss 0.3800 accuracy 0.9100 (12.5 s)`."""
    shown = "".join(f" {k} {v:.4f}" for k, v in (event.get("metrics") or {}).items())
    return (
        f"Epoch {event['epoch']}/{event['max_epochs']}: train_loss {event['train_loss']:.4f} "
        f"valid_loss {event['valid_loss']:.4f}{shown} ({event.get('seconds', 0):.1f} s)"
        + (" *" if event.get("best") else "")
    )


class Reporter(abc.ABC):
    """Base reporter: collects nothing, prints nothing; subclasses decide where events go."""

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._lifeline_lost = threading.Event()
        self.events: list[dict[str, Any]] = []

    @abc.abstractmethod
    def emit(self, event_type: str, **fields: Any) -> None:
        """Deliver one event (to the pipe, the console or a list)."""

    def say(self, level: str, text: str) -> None:
        self.emit("message", level=level, text=text)

    def progress(self, percent: float, phase: str, **fields: Any) -> None:
        self.emit("progress", percent=round(max(0.0, min(100.0, percent)), 2), phase=phase, **fields)

    def request_cancel(self) -> None:
        self._cancel.set()

    def check_stop(self) -> None:
        """Called at batch boundaries: raises StopRequested when the run must end."""
        if self._lifeline_lost.is_set():
            raise StopRequested(ExitCode.LIFELINE_LOST, "the server closed the lifeline; stopping (resumable)")
        if self._cancel.is_set():
            raise StopRequested(ExitCode.CANCELLED, "training cancelled")

    def close(self) -> None:
        pass


class ListReporter(Reporter):
    """Keeps events in memory (tests, embedding)."""

    def __init__(self, echo: bool = False) -> None:
        super().__init__()
        self.echo = echo

    def emit(self, event_type: str, **fields: Any) -> None:
        encode_event(event_type, **fields)  # validates the type and that the fields serialise
        self.events.append({"type": event_type, **fields})
        if self.echo and event_type == "message":
            print(f"[{fields['level']}] {fields['text']}", file=sys.stderr)
        elif self.echo and event_type == "epoch":
            print(format_epoch(fields), file=sys.stderr)


class ConsoleReporter(Reporter):
    """`gpjobs train`: messages and a progress line on stderr; Ctrl-C cancels at the next batch."""

    def __init__(self, stream=None, quiet: bool = False) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._last_percent = -10.0

    def emit(self, event_type: str, **fields: Any) -> None:
        self.events.append({"type": event_type, **fields})
        if event_type == "message" and not self.quiet:
            prefix = "" if fields["level"] == "info" else f"{fields['level'].upper()}: "
            print(prefix + fields["text"], file=self.stream, flush=True)
        elif event_type == "epoch" and not self.quiet:
            print(format_epoch(fields), file=self.stream, flush=True)
        elif event_type == "progress" and not self.quiet:
            percent = fields["percent"]
            if percent - self._last_percent >= 10 or percent >= 100:
                self._last_percent = percent
                print(f"  {percent:5.1f}% ({fields['phase']})", file=self.stream, flush=True)
        elif event_type == "failed":
            print(f"FAILED: {fields['text']}", file=self.stream, flush=True)
            for line in fields.get("details") or []:
                if line not in fields["text"]:  # the text often quotes the report already
                    print(f"  {line}", file=self.stream, flush=True)

    def install_sigint(self) -> None:
        def handler(signum, frame):  # second Ctrl-C: stop at once
            if self._cancel.is_set():
                raise KeyboardInterrupt
            print("cancelling at the next batch (Ctrl-C again to abort)", file=self.stream, flush=True)
            self._cancel.set()

        signal.signal(signal.SIGINT, handler)


class ChildReporter(Reporter):
    """The training child: events on the saved real stdout, heartbeats, SIGTERM, stdin lifeline."""

    def __init__(self, heartbeat_seconds: float = 5.0, *, lifeline: bool = True, lifeline_grace: float = 60.0) -> None:
        super().__init__()
        # Keep the real stdout for events; point fd 1 (and sys.stdout) at stderr so stray prints from any
        # library cannot corrupt the event stream.
        self._fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._heartbeat = heartbeat_seconds
        self.lifeline_grace = lifeline_grace
        signal.signal(signal.SIGTERM, lambda signum, frame: self._cancel.set())
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()
        if lifeline:
            threading.Thread(target=self._watch_lifeline, name="lifeline", daemon=True).start()

    def emit(self, event_type: str, **fields: Any) -> None:
        data = encode_event(event_type, **fields)
        with self._lock:
            try:
                os.write(self._fd, data)
            except OSError:  # the pipe is gone: the server died; the lifeline logic stops the run
                self._lifeline_lost.set()

    def _beat(self) -> None:
        while not self._closed.wait(self._heartbeat):
            self.emit("heartbeat")

    def _watch_lifeline(self) -> None:
        try:
            # The raw fd, not sys.stdin: a daemon thread blocked inside a buffered reader aborts the
            # interpreter at shutdown ("could not acquire lock for <stdin>").
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        if self._closed.is_set():
            return
        self._lifeline_lost.set()
        # Normally the loop stops at the next batch boundary; a run stuck elsewhere (data loading, a
        # huge validation pass) must not outlive its server for long.
        if not self._closed.wait(self.lifeline_grace):
            os._exit(int(ExitCode.LIFELINE_LOST))

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            try:
                os.fsync(self._fd)
            except OSError:
                pass


PR_SET_PDEATHSIG = 1
DIE_WITH_PARENT_ENV = "GPJOBS_DIE_WITH_PARENT"  # set by a parent that may die without closing our stdin first


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a killed launcher takes its ranks along, a
    killed Ray worker its training child); exits at once when the parent is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(int(ExitCode.LIFELINE_LOST))


def now() -> float:
    return time.perf_counter()
