"""`create_app(config)`: the aiohttp application with its store and scheduler wired in cleanup_ctx.

Startup order: store (migrations applied) -> scheduler (boot recovery, then dispatch). Shutdown runs the
other way: the scheduler stops first (children checkpoint, jobs requeued), then the store closes.
Nothing is global: everything hangs off the app under the typed keys of gpjobs.appkeys.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from gpjobs.appkeys import BOOT_ID_KEY, CONFIG_KEY, SCHEDULER_KEY, STORE_KEY
from gpjobs.config import Config

__all__ = ["create_app", "CONFIG_KEY", "STORE_KEY", "SCHEDULER_KEY", "BOOT_ID_KEY"]

log = structlog.get_logger("gpjobs.app")


def create_app(config: Config, *, boot_id: str | None = None, run_scheduler: bool = True) -> web.Application:
    """The whole server as an aiohttp Application (tests use it with aiohttp_client)."""
    from gpjobs.web.middleware import HANDLER_ARGS

    app = web.Application(client_max_size=config.max_request_bytes, handler_args=HANDLER_ARGS)
    app[CONFIG_KEY] = config
    app[BOOT_ID_KEY] = boot_id or uuid.uuid4().hex
    app.cleanup_ctx.append(_store_context)
    if run_scheduler:
        app.cleanup_ctx.append(_scheduler_context)
    _optional_setup(app, "gpjobs.web", "setup_web")
    _optional_setup(app, "gpjobs.web.portal", "setup_portal")
    _optional_setup(app, "gpjobs.web.metrics", "setup_metrics")  # after the web middlewares: it goes outermost
    return app


def _metrics(app: web.Application) -> Any:
    """The app's metrics (web/metrics.py), or None when they are not set up."""
    from gpjobs.web.metrics import METRICS_KEY

    return app.get(METRICS_KEY)


def _optional_setup(app: web.Application, module_name: str, function: str) -> None:
    """Call module.function(app) when the module exists (lets the server start before every part is built)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        log.warning("module not available; its routes are missing", module=module_name)
        return
    setup = getattr(module, function, None)
    if setup is not None:
        setup(app)


def prepare_directories(config: Config) -> None:
    """Create the storage folders (and the default file share) so a fresh machine just works."""
    for path in (config.data_dir, config.content_dir, config.jobs_dir, config.file_shares.get("default")):
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)


async def _store_context(app: web.Application) -> AsyncIterator[None]:
    from gpjobs.store import Store

    config = app[CONFIG_KEY]
    prepare_directories(config)
    assert config.db_path is not None
    store = await Store.open(config.db_path, synchronous=config.db_synchronous.upper())
    app[STORE_KEY] = store
    metrics = _metrics(app)
    if metrics is not None:
        store.db.on_write = metrics.sqlite_write.observe
    log.info("store opened", path=str(config.db_path), schema=await store.schema_version())
    try:
        yield
    finally:
        await store.close()
        log.info("store closed")


async def _scheduler_context(app: web.Application) -> AsyncIterator[None]:
    from gpjobs.scheduler import Scheduler

    scheduler = Scheduler(app[CONFIG_KEY], app[STORE_KEY], app[BOOT_ID_KEY], observer=_metrics(app))
    await scheduler.start()
    app[SCHEDULER_KEY] = scheduler
    log.info("scheduler started", devices=app[CONFIG_KEY].devices, boot_id=app[BOOT_ID_KEY])
    try:
        yield
    finally:
        await scheduler.stop()
