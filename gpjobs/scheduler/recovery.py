"""Boot recovery: jobs still Executing/Cancelling under an older boot lost their supervisor.

Run before the scheduler claims anything. Each orphan's child (if it somehow survived its lifeline) is
killed; then a cancel-requested job becomes Cancelled, and a running one is queued again to resume from its
checkpoint. The server crash was not the job's doing, so it gives the attempt back, like a graceful
shutdown; crashes are counted on their own and a job that outlives SERVER_CRASH_LIMIT of them is Failed.
"""

from __future__ import annotations

from gpjobs import messages as texts
from gpjobs.domain import SERVER_CRASH_LIMIT, JobStatus, MessageType
from gpjobs.scheduler.child import kill_stray_group
from gpjobs.store import Store

S = JobStatus


async def recover_orphans(store: Store, boot_id: str) -> dict[str, int]:
    """Settle every orphaned job; returns counts (requeued, failed, cancelled)."""
    counts = {"requeued": 0, "failed": 0, "cancelled": 0}
    for job in await store.orphaned_jobs(boot_id):
        kill_stray_group(await store.job_pid(job.job_id), job.job_id)
        if job.status is S.CANCELLING:
            await store.transition(
                job.job_id,
                S.CANCELLED,
                sources={S.CANCELLING},
                messages=[(MessageType.INFORMATIVE, texts.CANCEL_COMPLETE)],
            )
            counts["cancelled"] += 1
            continue
        crashes = job.server_crashes + 1
        if crashes > SERVER_CRASH_LIMIT:
            text = texts.crash_limit_reached(crashes, SERVER_CRASH_LIMIT)
            await store.transition(
                job.job_id,
                S.FAILED,
                error=text,
                messages=[(MessageType.ERROR, text), (MessageType.ERROR, texts.tool_failed(job.task))],
            )
            counts["failed"] += 1
        else:
            # No epoch from the store here: its checkpoint_epoch may lag what reached the disk before the
            # crash. The child says which checkpoint it resumed from when it starts (supervisor.py).
            await store.transition(
                job.job_id,
                S.SUBMITTED,
                sources={S.EXECUTING},
                run_after_ms=0,
                attempts=max(0, job.attempts - 1),
                server_crashes=crashes,
                messages=[(MessageType.WARNING, texts.interrupted_by_crash(crashes, SERVER_CRASH_LIMIT))],
            )
            counts["requeued"] += 1
    return counts
