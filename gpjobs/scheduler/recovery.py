"""Boot recovery: jobs still Executing/Cancelling under an older boot lost their supervisor.

Run before the scheduler claims anything. Each orphan's child (if it somehow survived its lifeline) is
killed; then a cancel-requested job becomes Cancelled, a job with attempts left is queued again to resume
from its checkpoint, and one without becomes Failed.
"""

from __future__ import annotations

from gpjobs.domain import JobStatus, MessageType, now_ms
from gpjobs.scheduler.child import kill_stray_group
from gpjobs.store import Store

S = JobStatus


async def recover_orphans(store: Store, boot_id: str) -> dict[str, int]:
    """Settle every orphaned job; returns counts (requeued, failed, cancelled)."""
    counts = {"requeued": 0, "failed": 0, "cancelled": 0}
    active = {S.EXECUTING, S.CANCELLING}
    for job in await store.orphaned_jobs(boot_id):
        kill_stray_group(await store.job_pid(job.job_id), job.job_id)
        now = now_ms()
        if job.status is S.CANCELLING or job.cancel_requested_ms:
            await store.transition(job.job_id, S.CANCELLED, sources=active, finished_ms=now, progress=None,
                                   pid=None, messages=[(MessageType.INFORMATIVE, "Cancel complete.")])
            counts["cancelled"] += 1
        elif job.attempts >= job.max_attempts:
            text = f"Lost: the server restarted while the job ran; all {job.max_attempts} attempts used."
            await store.transition(job.job_id, S.FAILED, sources=active, finished_ms=now, error=text, progress=None,
                                   pid=None, messages=[(MessageType.ERROR, text),
                                                       (MessageType.ERROR, "TrainDeepLearningModel failed.")])
            counts["failed"] += 1
        else:
            epoch = job.checkpoint_epoch or 0
            await store.transition(job.job_id, S.SUBMITTED, sources=active, run_after_ms=0, pid=None, messages=[
                (MessageType.WARNING, f"Resumed from epoch {epoch} after server restart "
                                      f"(attempt {job.attempts + 1} of {job.max_attempts}).")])
            counts["requeued"] += 1
    return counts
