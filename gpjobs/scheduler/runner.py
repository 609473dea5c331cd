"""One attempt of one claimed job: build the child's input, supervise the child, settle the outcome.

Each concern is its own piece: `ChildInput` (child_input.py) writes the spec, `ChildSupervisor`
(supervisor.py) runs the child and ingests its events, `Settlement` (settle.py) publishes or applies the
ending. `JobRun` only puts them in order and is what the scheduler, the watchdog and cancel hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gpjobs import messages as texts
from gpjobs.config import Config
from gpjobs.domain import Job
from gpjobs.scheduler.child import WarmTrainer
from gpjobs.scheduler.child_input import BadJob, ChildInput
from gpjobs.scheduler.observe import SchedulerObserver
from gpjobs.scheduler.pool import Pool
from gpjobs.scheduler.settle import AttemptEnd, Settlement
from gpjobs.scheduler.supervisor import ChildSupervisor
from gpjobs.scheduler.workdirs import tidy_finished
from gpjobs.store import Store

log = structlog.get_logger("gpjobs.scheduler")


class JobRun:
    """One attempt of one job on one slot."""

    def __init__(
        self,
        store: Store,
        config: Config,
        job: Job,
        device: str,
        *,
        wake_at: Callable[[float], None],
        warm: WarmTrainer | None = None,
        observer: SchedulerObserver | None = None,
        pool: Pool | None = None,
    ) -> None:
        self.job = job
        self.device = device
        self.store, self.config = store, config
        self.log = log.bind(job_id=job.job_id, device=device)
        self.child_input = ChildInput(store, config, job, device, pool)
        self.settlement = Settlement(store, config, job, self.log, wake_at)
        self.supervisor = ChildSupervisor(
            store,
            config,
            job,
            device,
            self.child_input.work_dir,
            self.log,
            on_result=self.settlement.publish,
            warm=warm,
            observer=observer or SchedulerObserver(),
            pool=pool,
        )

    @property
    def job_id(self) -> str:
        return self.job.job_id

    def stop(self, reason: str, grace_s: float) -> None:
        """Stop the attempt (retry.STOP_*): SIGTERM now, SIGKILL after `grace_s`."""
        self.supervisor.stop(reason, grace_s)

    async def run(self) -> None:
        """Run the attempt to its end; never raises (a supervisor bug fails the job, not the server)."""
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - defensive: keep the slot alive
            self.log.exception("supervisor error")
            await self.settlement.fail(texts.supervisor_error(exc))
        finally:
            self.supervisor.close()
        try:  # a job that ended keeps only what work_retention says (an interrupted one keeps its checkpoint)
            await tidy_finished(self.store, self.config, self.job_id)
        except Exception:  # tidying is housekeeping: the next boot retries it
            self.log.exception("work folder not tidied")

    async def _run(self) -> None:
        supervisor = self.supervisor
        try:
            spec_path = await self.child_input.write_spec()
        except BadJob as exc:
            await self.settlement.fail(str(exc))
            return
        if supervisor.stop_reason is not None:  # cancelled (or shut down) between claim and spawn
            await self.settlement.settle(
                AttemptEnd(rc=None, stop_reason=supervisor.stop_reason, checkpoint_epoch=supervisor.checkpoint_epoch)
            )
            return
        rc = await supervisor.run(spec_path, self.child_input.split)
        await self.settlement.settle(
            AttemptEnd(
                rc=rc,
                stop_reason=supervisor.stop_reason,
                checkpoint_epoch=supervisor.checkpoint_epoch,
                failure=supervisor.failure,
                log_tail=supervisor.log_tail(),
            )
        )
