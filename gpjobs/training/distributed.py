"""One job on several devices: torch.distributed, one process (rank) per device, launched from the child.

The training child (or `gpjobs train`) stays the one process the scheduler sees: it keeps the event pipe,
the heartbeat, the stdin lifeline and the SIGTERM handling, and starts one rank per device with
`torch.multiprocessing` (spawn). Ranks form one process group (NCCL on CUDA, gloo on the CPU) over a
loopback TCP rendezvous. Rank 0's events reach the launcher through a pipe per rank and leave through the
launcher's reporter; other ranks only report a failure. Every rank trains its share of each batch under
DistributedDataParallel (engine/steppers.py); rank 0 alone runs the LR range test, validates, writes the
checkpoints and the package, and broadcasts what the others must agree on (the learning rate, each epoch's
validation results).

How the launcher ends (the first rule that applies, once every rank is gone):
  1. rank 0 exited 0: the job succeeded (its `result` was forwarded);
  2. a rank died by a signal the launcher did not send (kill -9, the OOM killer): the launcher dies by the
     same signal, so the server treats the job as lost and resumes it from its checkpoint, as with one device;
  3. a stop was asked for (cancel, shutdown, lifeline): its exit code (another rank's error is its echo);
  4. the first `failed` event any rank sent (e.g. out of memory on rank 1) and its exit code;
  5. the first non-zero exit status.
A rank's exit is clean when it said so just before leaving (destroy the process group, then `os._exit`:
environment.md §6); once the ending is known the others get STOP_GRACE_S, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gpjobs.training.events import Reporter, StopRequested, die_with_parent
from gpjobs.training.protocol import ExitCode, JobSpec, encode_event

# Generous: rank 0 alone runs the LR range test and validation while the others wait in a broadcast.
# A dead rank is noticed by the launcher (its process exits), not by this timeout.
PROCESS_GROUP_TIMEOUT = timedelta(hours=3)
STOP_GRACE_S = 10.0  # once the ending is known, the time the other ranks get to exit before SIGKILL
POLL_S = 0.25
STOP_CODES = frozenset({int(ExitCode.CANCELLED), int(ExitCode.LIFELINE_LOST)})


# --- in a rank: who am I, and agreeing with the others ---------------------------------------------------


def rank_and_world() -> tuple[int, int]:
    """(this process' rank, number of ranks); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that reports, checkpoints and packages."""
    return rank_and_world()[0] == 0


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object); `value` itself outside a process group."""
    if rank_and_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of `values` over the ranks (e.g. each rank's batch losses)."""
    if rank_and_world()[1] == 1:
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


class _TrainingLoss(nn.Module):
    """The family's whole loss computation as one forward pass, so DDP sees every parameter it uses
    whatever model methods the family calls (`model.losses(...)`, `model.forward_train(...)`, ...)."""

    def __init__(self, family: Any, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.device = device

    def forward(self, batch: Any) -> torch.Tensor:
        return self.family.training_loss(self.model, batch, self.device)


def _ddp(module: nn.Module, device: torch.device) -> DistributedDataParallel:
    # find_unused_parameters: some families leave parameters out of some losses (heads, frozen parts).
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def ddp_training_loss(family: Any, model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """A DDP module whose forward(batch) is the family's training loss on `model` (gradients averaged)."""
    return _ddp(_TrainingLoss(family, model, device), device)


def ddp_networks(model: nn.Module, device: torch.device) -> nn.Module:
    """For the families that step several networks themselves (GANs): a view of `model` whose trainable
    sub-networks (model.generator, model.discriminator, ...) are each wrapped in DDP. The view shares every
    parameter and buffer with `model`; `model` itself (its state_dict, its optimizers) is unchanged."""
    if any(p.requires_grad for p in model.parameters(recurse=False)):
        raise ValueError(
            f"{type(model).__name__} has trainable parameters of its own; a multi-network model "
            "must keep them in its sub-networks to train on several devices"
        )
    view = object.__new__(type(model))
    view.__dict__.update(model.__dict__)
    view.__dict__["_modules"] = {
        name: _ddp(child, device) if child is not None and any(p.requires_grad for p in child.parameters()) else child
        for name, child in model._modules.items()
    }
    return view


# --- the launcher ----------------------------------------------------------------------------------------


def run_training(spec: JobSpec, reporter: Reporter) -> int:
    """Run the job: in this process on one device, or one rank per device of `spec.runtime.devices`."""
    from gpjobs.training.run_job import run_job

    devices = list(spec.runtime.devices) or [spec.runtime.device]
    world = min(len(devices), max(1, spec.training.batch_size))
    if world < len(devices):
        reporter.say(
            "warning",
            f"batch_size {spec.training.batch_size} cannot be split over {len(devices)} devices; "
            f"training on {world} of them ({', '.join(devices[:world])})",
        )
    if world == 1:
        return int(
            run_job(
                dataclasses.replace(spec, runtime=dataclasses.replace(spec.runtime, device=devices[0], devices=())),
                reporter,
            )
        )
    return Launcher(spec, devices[:world], reporter).run()


@dataclasses.dataclass
class _Rank:
    process: Any
    events: Connection | None
    device: str
    said_exit: int | None = None  # the exit status the rank announced just before leaving
    killed_by_launcher: bool = False
    seen_exit: bool = False

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    @property
    def foreign_signal(self) -> int | None:
        """The signal that killed this rank, unless it had already said it was leaving or we sent it."""
        code = self.exitcode
        if code is None or code >= 0 or self.killed_by_launcher or self.said_exit is not None:
            return None
        return -code


class Launcher:
    """Starts the ranks, forwards rank 0's events, propagates stop requests, decides the ending."""

    def __init__(self, spec: JobSpec, devices: list[str], reporter: Reporter) -> None:
        self.spec, self.devices, self.reporter = spec, devices, reporter
        self.ctx = mp.get_context("spawn")
        self.stop = self.ctx.Value("i", 0)  # an ExitCode the ranks stop with at their next batch; 0: go on
        self.ranks: list[_Rank] = []
        self.failures: list[dict[str, Any]] = []  # `failed` events, in arrival order
        self.exits: list[int] = []  # non-zero exit statuses, in the order they were seen

    def run(self) -> int:
        port = _free_port()
        spec_json = self.spec.to_json()
        for rank, device in enumerate(self.devices):
            reader, writer = self.ctx.Pipe(duplex=False)
            process = self.ctx.Process(
                target=rank_main,
                name=f"gpjobs-rank-{rank}",
                daemon=False,
                args=(spec_json, rank, self.devices, port, writer, self.stop, os.getpid()),
            )
            process.start()
            writer.close()  # the rank holds the only write end: its death ends our reads (EOF)
            self.ranks.append(_Rank(process, reader, device))
        try:
            self._supervise()
        finally:
            for launched in self.ranks:  # never leave a rank behind (e.g. the launcher itself failing)
                if launched.process.is_alive():
                    launched.killed_by_launcher = True
                    launched.process.kill()
                launched.process.join()
        return self._ending()

    def _supervise(self) -> None:
        deadline: float | None = None  # set once the ending is known
        while any(r.process.is_alive() or r.events is not None for r in self.ranks):
            self._propagate_stop()
            readers = [r.events for r in self.ranks if r.events is not None]
            sentinels = [r.process.sentinel for r in self.ranks if r.process.is_alive()]
            ready = wait(readers + sentinels, timeout=POLL_S)
            for rank in self.ranks:  # exits first: a rank's death comes before the errors it causes elsewhere
                if rank.exitcode is not None and not rank.seen_exit:
                    if rank.events is not None:
                        self._read(rank)  # its last words (an announced exit, a failure) come before its exit
                    self._note_exit(rank)
            for rank in self.ranks:
                if rank.events is not None and rank.events in ready:
                    self._read(rank)
            if deadline is None and self._ending_known():
                deadline = time.monotonic() + STOP_GRACE_S
                with self.stop.get_lock():
                    self.stop.value = self.stop.value or int(ExitCode.CANCELLED)
            if deadline is not None and time.monotonic() > deadline:
                for rank in self.ranks:
                    if rank.process.is_alive():
                        rank.killed_by_launcher = True
                        rank.process.kill()
                deadline = time.monotonic() + STOP_GRACE_S

    def _propagate_stop(self) -> None:
        """The launcher's own stop requests (SIGTERM, Ctrl-C, a closed lifeline) reach the ranks here."""
        try:
            self.reporter.check_stop()
        except StopRequested as stop:
            with self.stop.get_lock():
                if not self.stop.value:
                    self.stop.value = int(stop.exit_code)

    def _note_exit(self, rank: _Rank) -> None:
        if rank.exitcode is None or rank.seen_exit:
            return
        rank.seen_exit = True
        code = rank.said_exit if rank.said_exit is not None else rank.exitcode
        if code != 0 and not rank.killed_by_launcher:
            self.exits.append(code)

    def _read(self, rank: _Rank) -> None:
        assert rank.events is not None
        try:
            while rank.events.poll():
                _, event_type, fields = rank.events.recv()
                if event_type == "exit":
                    rank.said_exit = int(fields["code"])
                elif event_type == "failed":
                    self.failures.append(fields)
                else:
                    self.reporter.emit(event_type, **fields)
        except (EOFError, OSError):
            rank.events.close()
            rank.events = None

    def _ending_known(self) -> bool:
        main = self.ranks[0]
        return (
            main.exitcode is not None
            or bool(self.failures)
            or bool(self.exits)
            or any(r.foreign_signal for r in self.ranks)
        )

    def _ending(self) -> int:
        main = self.ranks[0]
        if main.exitcode == 0 or main.said_exit == 0:
            return 0
        for index, rank in enumerate(self.ranks):
            if rank.foreign_signal:
                sig = rank.foreign_signal
                self.reporter.say(
                    "warning",
                    f"rank {index} (device {rank.device}) was killed by signal {sig}; stopping the job's other ranks",
                )
                _die_by(sig)
        stops = [code for code in [self.stop.value, main.said_exit, *self.exits] if code in STOP_CODES]
        if stops:
            return int(stops[0])
        if self.failures:
            first = self.failures[0]
            self.reporter.emit("failed", **first)
            return int(first.get("exit_code") or ExitCode.ERROR)
        if self.exits:
            return self.exits[0]
        return int(main.exitcode or ExitCode.ERROR)


def _die_by(sig: int) -> None:
    """End this process by `sig` (the server classifies a signal death as a lost child)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    time.sleep(5)
    os._exit(128 + sig)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- a rank ---------------------------------------------------------------------------------------------


class RankReporter(Reporter):
    """A rank's reporter: rank 0 sends every event to the launcher, the others only a failure; stops when
    this rank gets SIGTERM or the launcher asks every rank to stop."""

    def __init__(self, rank: int, events: Connection, stop: Any) -> None:
        super().__init__()
        self.rank, self.conn, self.stop = rank, events, stop
        self._lock = threading.Lock()
        signal.signal(signal.SIGTERM, lambda signum, frame: self._cancel.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the launcher, which stops every rank

    def emit(self, event_type: str, **fields: Any) -> None:
        encode_event(event_type, **fields)  # same validation as the pipe
        if self.rank == 0 or event_type == "failed":
            self._send(event_type, fields)

    def _send(self, event_type: str, fields: dict[str, Any]) -> None:
        with self._lock:
            try:
                self.conn.send((self.rank, event_type, fields))
            except OSError:  # the launcher is gone; this process dies with it
                self._lifeline_lost.set()

    def say_exit(self, code: int) -> None:
        self._send("exit", {"code": int(code)})

    def check_stop(self) -> None:
        code = self.stop.value
        if code == ExitCode.LIFELINE_LOST:
            self._lifeline_lost.set()
        elif code:
            self._cancel.set()
        super().check_stop()


def rank_main(
    spec_json: str, rank: int, devices: list[str], port: int, events: Connection, stop: Any, parent_pid: int
) -> None:
    """One rank: join the process group, train (run_job), leave cleanly, `os._exit` with the job's code."""
    die_with_parent(parent_pid)
    reporter = RankReporter(rank, events, stop)
    code: int = int(ExitCode.ERROR)
    joined = False
    try:
        from gpjobs.training.run_job import run_job

        spec = JobSpec.from_json(spec_json)
        device = torch.device(devices[rank])
        torch.set_num_threads(max(1, int(spec.runtime.num_threads)))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=len(devices),
            timeout=PROCESS_GROUP_TIMEOUT,
        )
        joined = True
        runtime = dataclasses.replace(spec.runtime, device=devices[rank], devices=tuple(devices))
        code = int(run_job(dataclasses.replace(spec, runtime=runtime), reporter))
    except BaseException as exc:  # noqa: BLE001 - the rank must still say why and leave
        traceback.print_exc()
        reporter.emit(
            "failed",
            exit_code=int(ExitCode.ERROR),
            text=f"Training failed on rank {rank} ({devices[rank]}): {type(exc).__name__}: {exc}",
            details=[],
        )
    finally:
        if joined:
            with contextlib.suppress(Exception):
                if code == ExitCode.OK:
                    dist.barrier()  # every rank is done before rank 0's store (the rendezvous) goes away
            reporter.say_exit(code)
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        else:
            reporter.say_exit(code)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
