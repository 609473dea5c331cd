"""URL table and the service-level handlers (directory, service, task, health)."""

from __future__ import annotations

from aiohttp import web

from gpjobs.appkeys import CONFIG_KEY, STORE_KEY
from gpjobs.tasks.registry import TASKS
from gpjobs.web import admin, gp_jobs, gp_service
from gpjobs.web.auth import current_principal, token_query
from gpjobs.web.gp_jobs import task_of
from gpjobs.web.render import json_response, output_format, render

SERVICES = gp_service.SERVICES_ROOT
FOLDER = f"{SERVICES}/{gp_service.SERVICE_FOLDER}"
SERVICE = gp_service.SERVICE_PATH
# One set of routes for every task of the registry: the task name is a path segment that matches only them.
TASK = SERVICE + "/{task:" + "|".join(TASKS) + "}"
JOB = TASK + "/jobs/{job_id}"
RECENT_JOBS = 10


def _ctx(request: web.Request) -> dict:
    config = request.app[CONFIG_KEY]
    task = request.match_info.get("task")
    return {
        "token_query": token_query(request),
        "task_path": gp_service.task_path(task) if task else None,
        "service_path": SERVICE,
        "anonymous": config.auth.anonymous,
    }


async def rest_info(request: web.Request) -> web.Response:
    secured = not request.app[CONFIG_KEY].auth.anonymous
    return render(
        request,
        {
            "currentVersion": gp_service.CURRENT_VERSION,
            "fullVersion": str(gp_service.CURRENT_VERSION),
            "authInfo": {"isTokenBasedSecurity": secured, "tokenServicesUrl": "/sharing/rest/generateToken"},
        },
    )


async def services_root(request: web.Request) -> web.Response:
    return render(
        request, gp_service.services_root(), page="directory.html", context={**_ctx(request), "base": SERVICES}
    )


async def services_folder(request: web.Request) -> web.Response:
    return render(
        request, gp_service.services_folder(), page="directory.html", context={**_ctx(request), "base": SERVICES}
    )


async def service(request: web.Request) -> web.Response:
    return render(request, gp_service.service_description(), page="service.html", context=_ctx(request))


async def task(request: web.Request) -> web.Response:
    spec = task_of(request)
    context = _ctx(request)
    if output_format(request) == "html":
        # A person on the task page sees their own recent jobs of this task (admins: everyone's).
        principal = current_principal(request)
        recent: list = []
        if principal is not None:
            owner = None if principal.is_admin else principal.username
            recent, _total = await request.app[STORE_KEY].list_jobs(owner=owner, task=spec.name, limit=RECENT_JOBS)
        context["recent_jobs"] = recent
    return render(request, gp_service.task_description(spec), page="task.html", context=context)


async def health(request: web.Request) -> web.Response:
    """Liveness + the database answering; real HTTP status codes (outside the Esri spaces)."""
    try:
        queued = await request.app[STORE_KEY].queued_count()
    except Exception as exc:  # noqa: BLE001 - any database failure means "not healthy"
        return json_response({"status": "unavailable", "error": type(exc).__name__}, status=503)
    return json_response({"status": "ok", "queued": queued})


def add_routes(app: web.Application) -> None:
    """Every Esri resource answers GET and POST (protocol.md §1)."""
    table = [
        ("/arcgis/rest/info", rest_info),
        (SERVICES, services_root),
        (SERVICES + "/", services_root),
        (FOLDER, services_folder),
        (SERVICE, service),
        (TASK, task),
        (TASK + "/submitJob", gp_jobs.submit_job),
        (TASK + "/execute", gp_jobs.execute),
        (JOB, gp_jobs.job_status),
        (JOB + "/cancel", gp_jobs.cancel_job),
        (JOB + "/results", gp_jobs.job_results),
        (JOB + "/results/{name}", gp_jobs.job_result),
        (JOB + "/inputs", gp_jobs.job_inputs),
        (JOB + "/inputs/{name}", gp_jobs.job_input),
        (JOB + "/card/{name}", gp_jobs.job_card),
        (admin.ADMIN_JOBS_PATH, admin.query_jobs),
        (admin.ADMIN_JOBS_PATH + "/query", admin.query_jobs),
        (admin.ADMIN_JOBS_PATH + "/{job_id}", admin.job_detail),
    ]
    for path, handler in table:
        app.router.add_route("GET", path, handler)
        app.router.add_route("POST", path, handler)
    # State-changing admin operations are POST only (as in ArcGIS Server's admin API).
    app.router.add_route("POST", admin.ADMIN_JOBS_PATH + "/{job_id}/cancel", admin.cancel_job)
    app.router.add_route("POST", admin.ADMIN_JOBS_PATH + "/{job_id}/delete", admin.delete_job)
    app.router.add_route("GET", "/health", health)
