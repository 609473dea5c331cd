"""`GET /metrics`: Prometheus text exposition of the server (prometheus-client, one registry per app).

What is counted: jobs by status and model type, queue depth and the oldest wait, time from submit to claim,
attempt run time, epochs, slot utilisation, children started (warm or cold) and restarted, HTTP requests by
route, method and status with latency histograms (http_metrics.py), SQLite write transaction latency, and the
process itself. Admin tokens only, unless `metrics_public = true`. Outside the Esri URL spaces, so errors carry
real HTTP status codes (401 without a token, 403 for a user token). README "Monitoring" has a scrape config.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector

from gpjobs.appkeys import CONFIG_KEY, SCHEDULER_KEY, STORE_KEY
from gpjobs.domain import Job, now_ms
from gpjobs.scheduler.observe import SchedulerObserver
from gpjobs.web.auth import require_admin
from gpjobs.web.http_metrics import http_metrics_middleware

METRICS_PATH = "/metrics"
# Training runs take minutes to days; queue waits seconds to hours.
LONG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class Metrics(SchedulerObserver):
    """Every metric of one server, in its own registry; the scheduler and the store report into it."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        self.jobs = Gauge(
            "gpjobs_jobs", "Jobs in the store by status and model type", ["status", "model_type"], registry=registry
        )
        self.queue_depth = Gauge(
            "gpjobs_queue_depth", "Jobs waiting for a slot (submitted or waiting)", registry=registry
        )
        self.queue_oldest = Gauge(
            "gpjobs_queue_oldest_wait_seconds", "How long the longest-waiting queued job has waited", registry=registry
        )
        self.wait = Histogram(
            "gpjobs_job_wait_seconds",
            "Time from submit to the first claim of a job",
            ["model_type"],
            buckets=LONG_BUCKETS,
            registry=registry,
        )
        self.run_time = Histogram(
            "gpjobs_job_run_seconds",
            "Time one attempt held its slot, by how it ended",
            ["model_type", "outcome"],
            buckets=LONG_BUCKETS,
            registry=registry,
        )
        self.finished = Counter(
            "gpjobs_jobs_finished", "Jobs that reached a final status", ["model_type", "status"], registry=registry
        )
        self.epochs = Counter("gpjobs_epochs", "Training epochs finished", ["model_type"], registry=registry)
        self.children = Counter(
            "gpjobs_children_started",
            "Training children started, warm (handed a job) or cold (spawned for it)",
            ["device", "kind"],
            registry=registry,
        )
        self.restarts = Counter(
            "gpjobs_child_restarts",
            "Jobs started again after a lost child, a server crash or a graceful shutdown",
            registry=registry,
        )
        self.slot_busy = Gauge("gpjobs_slot_busy", "1 while the slot runs a job", ["device"], registry=registry)
        self.slot_busy_seconds = Counter(
            "gpjobs_slot_busy_seconds",
            "Seconds the slot has spent running jobs (utilisation: its rate)",
            ["device"],
            registry=registry,
        )
        self.http_requests = Counter(
            "gpjobs_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_latency = Histogram(
            "gpjobs_http_request_seconds",
            "HTTP request latency by route and method",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.sqlite_write = Histogram(
            "gpjobs_sqlite_write_seconds",
            "SQLite write transaction latency (BEGIN IMMEDIATE to COMMIT)",
            buckets=WRITE_BUCKETS,
            registry=registry,
        )
        self._busy_done: dict[str, float] = {}  # finished attempts' slot seconds, per device
        self._busy_reported: dict[str, float] = {}  # what the counter has been given so far

    # --- the scheduler's hooks ----------------------------------------------------------------------------

    def job_claimed(self, job: Job) -> None:
        if job.attempts > 1 or job.interruptions or job.server_crashes:
            self.restarts.inc()
        elif job.started_ms and job.created_ms:
            self.wait.labels(job.model_type).observe(max(0.0, (job.started_ms - job.created_ms) / 1000))

    def child_started(self, job: Job, device: str, *, warm: bool) -> None:
        self.children.labels(device, "warm" if warm else "cold").inc()

    def epoch_done(self, job: Job) -> None:
        self.epochs.labels(job.model_type).inc()

    def attempt_ended(self, job: Job, device: str, busy_s: float) -> None:
        outcome = job.status.value if job.is_terminal else "requeued"
        self.run_time.labels(job.model_type, outcome).observe(busy_s)
        if job.is_terminal:
            self.finished.labels(job.model_type, job.status.value).inc()
        self._busy_done[device] = self._busy_done.get(device, 0.0) + busy_s

    # --- scrape -------------------------------------------------------------------------------------------

    async def refresh(self, app: web.Application) -> None:
        """Read what is only known at scrape time: the store's job counts and the slots' state."""
        store = app[STORE_KEY]
        self.jobs.clear()
        for status, model_type, count in await store.job_counts():
            self.jobs.labels(status, model_type).set(count)
        self.queue_depth.set(await store.queued_count())
        oldest = await store.oldest_queued_ms()
        self.queue_oldest.set(0 if oldest is None else max(0.0, (now_ms() - oldest) / 1000))
        scheduler = app.get(SCHEDULER_KEY)
        for slot in getattr(scheduler, "slots", []):
            running = slot.task is not None and not slot.task.done() and slot.run is not None
            self.slot_busy.labels(slot.device).set(1 if running else 0)
            busy = self._busy_done.get(slot.device, 0.0)
            if running:
                busy += time.monotonic() - slot.run.supervisor.started_mono
            gained = busy - self._busy_reported.get(slot.device, 0.0)
            if gained > 0:  # a counter only grows: the running part is given once, then not again
                self.slot_busy_seconds.labels(slot.device).inc(gained)
                self._busy_reported[slot.device] = busy

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS_KEY: web.AppKey[Metrics] = web.AppKey("gpjobs_metrics", Metrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text format; admin tokens only unless the server is configured with metrics_public."""
    if not request.app[CONFIG_KEY].metrics_public:
        require_admin(request)
    metrics = request.app[METRICS_KEY]
    await metrics.refresh(request.app)
    response = web.Response(body=metrics.render())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


def setup_metrics(app: web.Application) -> Metrics:
    """Create the app's metrics, route /metrics and count every request (outermost middleware)."""
    metrics = Metrics()
    app[METRICS_KEY] = metrics
    app.middlewares.insert(0, http_metrics_middleware(metrics.http_requests, metrics.http_latency))
    app.router.add_route("GET", METRICS_PATH, metrics_endpoint)
    return metrics
