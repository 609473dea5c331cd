"""GP task and job handlers: submitJob, jobs/<id>, results, inputs, cancel (protocol.md §2.3-2.6), for every
task of the registry (the task is the URL's `{task}` segment; a job is only visible under its own task).

Handlers are thin: parse, call one store/scheduler function, render. The job JSON builders below are
pure so the wire shape is tested without a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gpjobs import messages as texts
from gpjobs.appkeys import CONFIG_KEY, SCHEDULER_KEY, STORE_KEY
from gpjobs.catalog import COMMON_ARGUMENTS
from gpjobs.domain import Job, JobStatus, Message, QuotaExceeded, is_job_id, new_job_id
from gpjobs.paths import PathError, StoreRoots
from gpjobs.tasks.inference import InferenceRequest
from gpjobs.tasks.params import ParameterError
from gpjobs.tasks.registry import DEFAULT_TASK, TASKS, TRAIN, TaskSpec, task_named
from gpjobs.web import charts, gp_service, model_card
from gpjobs.web.auth import require_principal, token_query
from gpjobs.web.gp_params import (
    check_devices,
    check_with_store,
    parse_submit,
    served_value,
)
from gpjobs.web.render import (
    JSON_CONTENT_TYPE,
    EsriError,
    dumps,
    invalid_parameters,
    invalid_url,
    output_format,
    params,
    render,
)

if TYPE_CHECKING:
    from gpjobs.store import Store

# --- pure JSON builders --------------------------------------------------------------------------


def messages_json(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"type": str(m.type), "description": m.description} for m in messages]


def progress_json(job: Job, messages: Sequence[Message]) -> dict[str, Any]:
    percentage = int(round(job.progress or 0))
    last = next((m.description for m in reversed(messages) if str(m.type).endswith("Informative")), "")
    return {"type": "default", "message": last or f"{percentage}% complete", "percentage": percentage}


def job_json(
    job: Job,
    messages: Sequence[Message] | None,
    *,
    recent: Sequence[Message] | None = None,
    message_count: int | None = None,
    next_start: int | None = None,
) -> dict[str, Any]:
    """The job resource: jobId, jobStatus, results/inputs once succeeded, progress only while executing,
    messages unless the caller asked without them (messages=None).

    `recent`: the latest messages (the progress text comes from them; default `messages`). With
    `message_count`, the body also says how many messages the job has, where the returned ones start
    (`messageStart`, 1-based) and, for a page, where the next page starts (`messageNextStart`, -1: none)."""
    body: dict[str, Any] = {"jobId": job.job_id, "jobStatus": JobStatus(job.status).value}
    if job.status is JobStatus.SUCCEEDED:
        task = task_named(job.task)
        body["results"] = {task.output.name: {"paramUrl": f"results/{task.output.name}"}}
        body["inputs"] = {name: {"paramUrl": f"inputs/{name}"} for name in task.input_names}
    if job.status is JobStatus.EXECUTING:
        body["progress"] = progress_json(job, recent if recent is not None else messages or ())
    if messages is not None:
        body["messages"] = messages_json(messages)
        if message_count is not None:
            body["messageCount"] = message_count
            body["messageStart"] = messages[0].seq if messages else message_count + 1
            if next_start is not None:
                body["messageNextStart"] = next_start
    return body


# --- how many messages a poll carries (issue: a 10,000-epoch job made every poll 1.5 MB) -------------------

MONITOR_DEFAULT = str(COMMON_ARGUMENTS["monitor"].default)  # what early stopping watches unless told
RECENT_MESSAGES = 100  # a plain poll: the most recent messages (and the count), whatever the job's length
MESSAGE_PAGE_MAX = 1000  # returnMessages=true: every message, in pages of at most this many


@dataclass(frozen=True)
class MessageView:
    """Which messages a job request asked for: none, the recent ones, or one page of all of them."""

    kind: str  # "none" | "recent" | "page"
    start: int = 1  # page: first message position (1-based)
    num: int = MESSAGE_PAGE_MAX  # page: at most this many


def message_view(query: Mapping[str, str]) -> MessageView:
    """`returnMessages=false`: none; `returnMessages=true` (what arcgis' GPJob.messages sends) or a
    `messageStart`/`messageNum`: a page of the full list; otherwise (every client's status poll): the
    recent ones. Raises EsriError for paging values that are not whole numbers in range."""
    flag = query.get("returnMessages", "").strip().lower()
    if flag in ("false", "0", "no"):
        return MessageView("none")
    paged = flag in ("true", "1", "yes") or any(query.get(k, "").strip() for k in ("messageStart", "messageNum"))
    if not paged:
        return MessageView("recent")
    start = _paging_int(query, "messageStart", 1, 1, 2**53)
    num = _paging_int(query, "messageNum", MESSAGE_PAGE_MAX, 1, MESSAGE_PAGE_MAX)
    return MessageView("page", start, num)


def _paging_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 16 and low <= int(text) <= high):
        raise invalid_parameters([f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}"])
    return int(text)


async def job_body(store: Store, job_id: str, view: MessageView) -> dict[str, Any] | None:
    """The job resource for `view`, read through the store's cache (None: the job is gone)."""
    job = await store.get_job(job_id)
    if job is None:
        return None
    # Messages are read after the job row: never older than the status they accompany. The two reads
    # after it go to the reader connections together (after a write, 200 pollers wait for this rebuild).
    if view.kind == "none":
        return job_json(job, None, recent=await store.last_messages(job_id, RECENT_MESSAGES))
    recent, count = await asyncio.gather(store.last_messages(job_id, RECENT_MESSAGES), store.message_count(job_id))
    if view.kind == "recent":
        return job_json(job, recent, message_count=count)
    page = await store.message_page(job_id, view.start, view.num)
    after = view.start + len(page)
    return job_json(job, page, recent=recent, message_count=count, next_start=after if after <= count else -1)


def result_value(job: Job) -> dict[str, Any] | None:
    """The output's value: {"itemId", "id"} for a published item, {"uri"} for a file-share output.

    Never a `url` key (the arcgis client would return it as a bare string, protocol.md §5.2).
    """
    result = dict(job.result or {})
    result.pop("url", None)
    if "id" in result and "itemId" not in result:
        result = {"itemId": result["id"], **result}
    return result or None


def result_json(job: Job) -> dict[str, Any]:
    output = task_named(job.task).output
    return {"paramName": output.name, "dataType": output.data_type, "value": result_value(job)}


def input_json(job: Job, name: str) -> dict[str, Any]:
    param = task_named(job.task).input_parameter(name)
    assert param is not None, name
    return {"paramName": name, "dataType": param.data_type, "value": served_value(job.inputs.get(name))}


# --- helpers ---------------------------------------------------------------------------------------


def task_of(request: web.Request) -> TaskSpec:
    """The task named in the URL (routes match registered task names only)."""
    try:
        return TASKS[request.match_info.get("task", DEFAULT_TASK)]
    except KeyError:
        raise invalid_url() from None


async def visible_job(request: web.Request) -> Job:
    """The job named in the URL if the caller may see it and it belongs to the URL's task; else the same
    'Invalid URL' as for no job."""
    principal = require_principal(request)
    job_id = request.match_info["job_id"]
    job = await request.app[STORE_KEY].get_job(job_id) if is_job_id(job_id) else None
    if job is None or not principal.can_see(job.owner) or job.task != task_of(request).name:
        raise invalid_url()
    return job


def _context(request: web.Request, **extra: Any) -> dict[str, Any]:
    task = task_of(request)
    return {"token_query": token_query(request), "task_path": gp_service.task_path(task.name), "task": task, **extra}


def _job_page_url(request: web.Request, job: Job) -> str:
    query = "f=html" + (f"&{token_query(request)}" if token_query(request) else "")
    return f"{gp_service.task_path(job.task)}/jobs/{job.job_id}?{query}"


# --- handlers --------------------------------------------------------------------------------------


async def submit_job(request: web.Request) -> web.StreamResponse:
    """Validate everything checkable, store the job with its first message, wake the scheduler."""
    principal = require_principal(request)
    app = request.app
    config = app[CONFIG_KEY]
    task = task_of(request)
    try:
        # Filesystem checks (stores, export folders, rasters) may touch slow shares: keep them off the event loop.
        submission = await asyncio.to_thread(
            parse_submit,
            dict(params(request)),
            StoreRoots.from_config(config),
            max_arguments_bytes=config.max_arguments_bytes,
            task=task,
        )
        check_devices(submission.request, config.devices)
        checked = await check_with_store(submission.request, app[STORE_KEY], principal)
    except ParameterError as exc:
        raise invalid_parameters(exc.details) from None
    model_type = checked.model_type if isinstance(checked, InferenceRequest) else checked.model_type.name
    job = Job(
        job_id=new_job_id(),
        owner=principal.username,
        status=JobStatus.SUBMITTED,
        task=task.name,
        model_type=model_type,
        inputs=submission.inputs,
        spec=checked.to_json_dict(),
        max_attempts=config.max_attempts,
    )
    try:
        job = await app[STORE_KEY].create_job(job, [texts.SUBMITTED], max_queued_per_user=config.max_queued_per_user)
    except QuotaExceeded as exc:
        raise EsriError(429, "Too many queued jobs.", [str(exc)]) from None
    scheduler = app.get(SCHEDULER_KEY)
    if scheduler is not None:
        scheduler.submitted()
    if output_format(request, default="json") == "html":
        raise web.HTTPSeeOther(_job_page_url(request, job))
    return render(request, {"jobId": job.job_id, "jobStatus": job.status.value})


async def job_status(request: web.Request) -> web.Response:
    """The job resource. JSON bodies are rendered once per change of the job (store.job_view) and served from
    memory to every poller until the job's next write: no SQLite round trip for an unchanged job."""
    job = await visible_job(request)
    store = request.app[STORE_KEY]
    view = message_view(params(request))
    fmt = output_format(request)
    if fmt == "html":
        return await job_page(request, job)
    pretty = fmt == "pjson"

    async def build() -> bytes | None:
        body = await job_body(store, job.job_id, view)
        return None if body is None else dumps(body, pretty=pretty)

    rendered = await store.job_view(job.job_id, ("json", view, pretty), build)
    if rendered is None:  # deleted between the check and the read
        raise invalid_url()
    return web.Response(body=rendered, content_type=JSON_CONTENT_TYPE, charset="utf-8")


async def job_page(request: web.Request, job: Job) -> web.Response:
    """The job page for people: status, progress bar, the live loss chart, recent messages, the model card
    (training); the output item and its files (inference)."""
    store = request.app[STORE_KEY]
    body = await job_body(store, job.job_id, MessageView("recent"))
    recent = await store.last_messages(job.job_id, RECENT_MESSAGES)
    training = task_named(job.task).kind == TRAIN
    history = charts.epoch_history(await store.epoch_messages(job.job_id)) if training else []
    monitor = str((job.spec.get("given_arguments") or {}).get("monitor") or MONITOR_DEFAULT)
    context = _context(
        request,
        job=job,
        messages=recent,
        message_count=await store.message_count(job.job_id),
        result=result_value(job),
        chart=charts.job_charts(history, monitor) if training else [],
        epochs=charts.epoch_progress(history, job),
        card=model_card.card_links(job) if training else None,
        training=training,
    )
    return render(request, body, page="job.html", context=context)


async def job_result(request: web.Request) -> web.Response:
    job = await visible_job(request)
    name = request.match_info["name"]
    if name != task_of(request).output.name:
        raise invalid_url()
    if job.status is not JobStatus.SUCCEEDED:
        raise EsriError(
            400,
            f"Job {job.job_id} has no results: it is {job.status.value}.",
            ["Results exist once the job status is esriJobSucceeded."],
        )
    return render(request, result_json(job), page="param.html", context=_context(request, job=job))


async def job_results(request: web.Request) -> web.Response:
    """11.1+ list form of the results (what the R client reads)."""
    job = await visible_job(request)
    body = [result_json(job)] if job.status is JobStatus.SUCCEEDED else []
    return render(request, body, page="params.html", context=_context(request, job=job, kind="results"))


async def job_input(request: web.Request) -> web.Response:
    job = await visible_job(request)
    name = request.match_info["name"]
    if name not in task_of(request).input_names:
        raise invalid_url()
    return render(request, input_json(job, name), page="param.html", context=_context(request, job=job))


async def job_inputs(request: web.Request) -> web.Response:
    job = await visible_job(request)
    body = [input_json(job, name) for name in task_of(request).input_names]
    return render(request, body, page="params.html", context=_context(request, job=job, kind="inputs"))


async def cancel_job(request: web.Request) -> web.StreamResponse:
    """Queued -> Cancelled, executing -> Cancelling; a finished job is returned unchanged."""
    job = await visible_job(request)
    job = await cancel(request.app, job)
    if output_format(request, default="json") == "html":
        raise web.HTTPSeeOther(_job_page_url(request, job))
    return render(request, {"jobId": job.job_id, "jobStatus": job.status.value})


async def cancel(app: web.Application, job: Job) -> Job:
    """Ask the scheduler to cancel (it signals a running child); used by the GP and admin handlers."""
    if job.is_terminal:
        return job
    scheduler = app.get(SCHEDULER_KEY)
    if scheduler is None:  # a server without a scheduler (e.g. a read-only replica) cannot stop children
        raise EsriError(503, "Job cancellation is unavailable: the scheduler is not running.", [])
    cancelled = await scheduler.cancel(job.job_id)
    if cancelled is None:  # deleted between the read and the cancel
        raise invalid_url()
    return cancelled


async def execute(request: web.Request) -> web.Response:
    """The synchronous `execute` operation does not exist on an asynchronous service: say what to use."""
    task = task_of(request)
    raise EsriError(
        400,
        f"{task.name} is an asynchronous task: use submitJob.",
        [f"POST {gp_service.task_path(task.name)}/submitJob, then poll jobs/<jobId>."],
    )


async def job_card(request: web.Request) -> web.Response:
    """`jobs/<id>/card/<name>`: the model card of a finished job whose package went to a file share (an item's
    card is served by the portal: content/items/<id>/card/<name>)."""
    job = await visible_job(request)
    trained = task_named(job.task).kind == TRAIN
    uri = (job.result or {}).get("uri") if job.status is JobStatus.SUCCEEDED and trained else None
    if not uri:
        raise EsriError(
            400,
            f"Job {job.job_id} has no model card here.",
            ["A job has a card once it has succeeded; a published item's card is on the item."],
        )
    try:
        package = StoreRoots.from_config(request.app[CONFIG_KEY]).resolve(str(uri)).local
    except PathError:
        raise invalid_url() from None
    return await model_card.card_response(package, request.match_info["name"])
