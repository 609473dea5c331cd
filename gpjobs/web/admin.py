"""Admin endpoints under /arcgis/admin/services/System/RasterAnalysisTools.GPServer/jobs (admins only).

Query jobs with filters, paging and sorting (shape after ArcGIS Server's jobs/query, protocol.md §2.7),
job detail, cancel any job, delete a finished job and its work files.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from aiohttp import web

from gpjobs.appkeys import CONFIG_KEY, STORE_KEY
from gpjobs.domain import Job, JobStatus, is_job_id
from gpjobs.web import gp_service
from gpjobs.web.auth import require_admin, token_query
from gpjobs.web.gp_jobs import cancel, messages_json, result_value
from gpjobs.web.render import EsriError, invalid_url, params, render

ADMIN_JOBS_PATH = f"/arcgis/admin/services/{gp_service.SERVICE_FOLDER}/{gp_service.SERVICE_NAME}.GPServer/jobs"
SORTS = {
    "created_desc": "created_desc",
    "created_asc": "created_asc",
    "updated_desc": "updated_desc",
    "newest": "created_desc",
    "oldest": "created_asc",
}
MAX_PAGE = 1000
MAX_INT = 2**53  # startTime/endTime are ms since 1970; start is 1-based. Larger is no time or page there is.


def _status_filter(raw: str) -> list[JobStatus] | None:
    """`jobStatus=Succeeded,esriJobFailed` -> statuses (with or without the esriJob prefix, any case)."""
    if not raw.strip():
        return None
    by_name = {s.value.lower(): s for s in JobStatus} | {s.value[len("esriJob") :].lower(): s for s in JobStatus}
    statuses = []
    for part in raw.split(","):
        key = part.strip().lower()
        if not key:
            continue
        if key not in by_name:
            raise EsriError(
                400,
                "Invalid or missing input parameters.",
                [f"jobStatus: '{part.strip()}' is not one of {', '.join(s.value for s in JobStatus)}"],
            )
        statuses.append(by_name[key])
    return statuses


def _int(name: str, raw: str, default: int | None, minimum: int = 0, maximum: int = MAX_INT) -> int | None:
    """A whole-number query parameter inside [minimum, maximum] (SQLite holds 64-bit integers)."""
    if not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise EsriError(
            400, "Invalid or missing input parameters.", [f"{name}: '{shown}' is not a whole number"]
        ) from None
    if not minimum <= value <= maximum:
        raise EsriError(
            400, "Invalid or missing input parameters.", [f"{name}: must be a whole number from {minimum} to {maximum}"]
        )
    return value


def admin_job_json(job: Job, *, detail: bool = False) -> dict[str, Any]:
    """One job as the admin API shows it (ArcGIS Server field names plus ours)."""
    body: dict[str, Any] = {
        "jobID": job.job_id,
        "status": job.status.value,
        "username": job.owner,
        "modelType": job.model_type,
        "submittedTime": job.created_ms,
        "startTime": job.started_ms,
        "endTime": job.finished_ms,
        "machinename": job.device,
        "progress": job.progress,
        "attempts": job.attempts,
        "maxAttempts": job.max_attempts,
        "url": f"{gp_service.TASK_PATH}/jobs/{job.job_id}",
    }
    if job.error:  # never a top-level "error": clients read that key as "this request failed"
        body["errorMessage"] = job.error
    if detail:
        body.update(
            {
                "inputs": job.inputs,
                "spec": job.spec,
                "result": result_value(job),
                "checkpointEpoch": job.checkpoint_epoch,
                "heartbeatTime": job.heartbeat_ms,
                "interruptions": job.interruptions,
            }
        )
    return body


async def query_jobs(request: web.Request) -> web.Response:
    """Filters: jobStatus, userName, modelType, startTime/endTime (ms, on submit time); paging: start (1-based),
    number; sort: created_desc | created_asc | updated_desc."""
    require_admin(request)
    p = params(request)
    statuses = _status_filter(p.get("jobStatus", ""))
    owner = p.get("userName", "").strip() or None
    model_type = p.get("modelType", "").strip().upper() or None
    since = _int("startTime", p.get("startTime", ""), None)
    until = _int("endTime", p.get("endTime", ""), None)
    number = min(_int("number", p.get("number", ""), 10, minimum=1) or 10, MAX_PAGE)
    start = _int("start", p.get("start", ""), 1, minimum=1) or 1
    sort_key = p.get("sort", "").strip().lower() or "created_desc"
    if sort_key not in SORTS:
        raise EsriError(
            400,
            "Invalid or missing input parameters.",
            [f"sort: '{sort_key}' is not one of {', '.join(sorted(SORTS))}"],
        )
    jobs, total = await request.app[STORE_KEY].list_jobs(
        owner=owner,
        statuses=statuses,
        model_type=model_type,
        since_ms=since,
        until_ms=until,
        order=SORTS[sort_key],
        limit=number,
        offset=start - 1,
    )
    next_start = start + len(jobs) if start - 1 + len(jobs) < total else -1
    body = {
        "total": total,
        "query": {
            "serviceName": f"{gp_service.SERVICE_FOLDER}/{gp_service.SERVICE_NAME}.GPServer",
            "jobStatus": [s.value for s in statuses] if statuses else None,
            "userName": owner,
            "modelType": model_type,
            "startTime": since,
            "endTime": until,
            "sort": SORTS[sort_key],
        },
        "num": len(jobs),
        "start": start,
        "nextStart": next_start,
        "results": [admin_job_json(j) for j in jobs],
    }
    return render(
        request,
        body,
        page="admin_jobs.html",
        context={"token_query": token_query(request), "admin_path": ADMIN_JOBS_PATH},
    )


async def _job(request: web.Request) -> Job:
    require_admin(request)
    job_id = request.match_info["job_id"]
    job = await request.app[STORE_KEY].get_job(job_id) if is_job_id(job_id) else None
    if job is None:
        raise invalid_url()
    return job


async def job_detail(request: web.Request) -> web.Response:
    job = await _job(request)
    body = admin_job_json(job, detail=True)
    body["messages"] = messages_json(await request.app[STORE_KEY].get_messages(job.job_id))
    return render(request, body)


async def cancel_job(request: web.Request) -> web.Response:
    job = await cancel(request.app, await _job(request))
    return render(request, {"status": "success", "jobID": job.job_id, "jobStatus": job.status.value})


async def delete_job(request: web.Request) -> web.Response:
    """Delete a finished job, its messages and its work folder (published items stay)."""
    job = await _job(request)
    if not job.is_terminal:
        raise EsriError(
            400,
            f"Job {job.job_id} is {job.status.value}; cancel it and wait until it has finished before deleting it.",
            [],
        )
    await request.app[STORE_KEY].delete_job(job.job_id)
    work_dir = request.app[CONFIG_KEY].jobs / job.job_id  # job_id is validated: no user path involved
    await asyncio.to_thread(shutil.rmtree, work_dir, True)
    return render(request, {"status": "success", "jobID": job.job_id})
