"""The gpjobs web app in-process, over a store and a scheduler of the test's choosing.

    config = app_config(tmp_path, anonymous=False)              # data under tmp_path/var, a cpu slot
    app = make_app(config)                                       # own store file, RecordingScheduler
    app = make_app(config, store=store, scheduler=InstantScheduler, portal=False)
    client = await start_app(app, ssl=None)                      # a started aiohttp TestClient; close it after
    client.app[STORE_KEY], client.app[SCHEDULER_KEY]             # what the handlers use

`make_app` wires what `gpjobs.app.create_app` wires (config, boot id, web routes, portal), but takes the store
(else it opens one at config.db_path and closes it at cleanup) and a scheduler factory `(config, store) ->
scheduler` (None: no scheduler). A scheduler with async `start()` is started; `stop()` or `close()` is awaited
at cleanup. `RecordingScheduler` records wake-ups; `InstantScheduler` publishes a tiny package at once. For
gpjobs' own store and scheduler use `gpjobs.app.create_app(app_config(tmp, trainer_command=FAKE_TRAINER_COMMAND))`.
"""

from __future__ import annotations

import asyncio
import json
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from ssl import SSLContext
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gpjobs.appkeys import BOOT_ID_KEY, CONFIG_KEY, SCHEDULER_KEY, STORE_KEY
from gpjobs.config import Config, load_config
from gpjobs.domain import Item, Job, JobStatus, MessageType, new_item_id, now_ms
from gpjobs.store import Store
from tests.harness.server import FAKE_TRAINER_COMMAND

__all__ = ["FAKE_TRAINER_COMMAND", "InstantScheduler", "RecordingScheduler", "app_config", "make_app", "start_app"]
BOOT_ID = "test-boot"

SchedulerFactory = Callable[[Config, Store], Any]


def app_config(tmp: Path, **settings: Any) -> Config:
    """A config with its data under tmp/var and one cpu slot; `settings` (config-file keys, `anonymous`
    included) go on top. The environment's GPJOBS_* variables are ignored."""
    return load_config(overrides={"data_dir": str(tmp / "var"), "devices": ["cpu"], **settings}, env={})


class RecordingScheduler:
    """Records wake-ups; cancels through the store's guarded request_cancel like the real one."""

    def __init__(self, config: Config, store: Store) -> None:
        self.store = store
        self.wakeups = 0

    def submitted(self) -> None:
        self.wakeups += 1

    async def cancel(self, job_id: str) -> Job | None:
        job, _changed = await self.store.request_cancel(job_id)
        return job


class InstantScheduler:
    """Claims each submitted job and publishes a small but well-formed .dlpk at once (no torch, no child),
    through the same store calls as the real publisher: real clients see the GP + portal protocol in seconds."""

    def __init__(self, config: Config, store: Store, *, executing_s: float = 1.5) -> None:
        self.store, self.content_dir, self.executing_s = store, config.content, executing_s
        self._tasks: set[asyncio.Task] = set()

    def submitted(self) -> None:
        task = asyncio.get_running_loop().create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel(self, job_id: str) -> Job | None:
        job = await self.store.get_job(job_id)
        if job is None or job.is_terminal:
            return job
        return await self.store.transition(
            job_id, JobStatus.CANCELLED, messages=[(MessageType.INFORMATIVE, "Cancel complete.")]
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self) -> None:
        while (job := await self.store.claim_next_job("cpu", "instant-boot")) is not None:  # says Executing...
            await asyncio.sleep(self.executing_s)  # long enough for pollers to see esriJobExecuting
            await self._publish(job)

    async def _publish(self, job: Job) -> None:
        output = job.spec.get("output") or {}
        name = str(output.get("name") or job.job_id)
        path = self.content_dir / job.job_id / f"{name}.dlpk"
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as package:
            package.writestr(f"{name}.emd", json.dumps({"Framework": "PyTorch", "ModelType": job.model_type}))
        item = Item(
            id=new_item_id(),
            owner=job.owner,
            title=name,
            name=f"{name}.dlpk",
            folder_id=output.get("folder_id"),
            size=path.stat().st_size,
            created_ms=now_ms(),
            path=str(path),
            job_id=job.job_id,
            properties={"modelType": job.model_type},
        )
        await self.store.publish_job(
            job.job_id, result={"id": item.id}, item=item, messages=[(MessageType.INFORMATIVE, "Training Finished")]
        )


def make_app(
    config: Config,
    *,
    store: Store | None = None,
    scheduler: SchedulerFactory | None = RecordingScheduler,
    portal: bool = True,
) -> web.Application:
    """The web layer (GP service, html pages and, unless portal=False, the portal) over `store` and the
    scheduler `scheduler(config, store)` builds; both are on the app once it has started."""
    from gpjobs.web import setup_web
    from gpjobs.web.portal import setup_portal

    app = web.Application(client_max_size=config.max_request_bytes)
    app[CONFIG_KEY] = config
    app[BOOT_ID_KEY] = BOOT_ID

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        own = store if store is not None else await Store.open(config.db_path)
        app[STORE_KEY] = own
        running = scheduler(config, own) if scheduler is not None else None
        if running is not None:
            if hasattr(running, "start"):
                await running.start()
            app[SCHEDULER_KEY] = running
        try:
            yield
        finally:
            if hasattr(running, "stop"):
                await running.stop()
            elif hasattr(running, "close"):
                await running.close()
            if store is None:
                await own.close()

    app.cleanup_ctx.append(lifecycle)
    setup_web(app)
    if portal:
        setup_portal(app)
    return app


async def start_app(app: web.Application, *, ssl: SSLContext | None = None) -> TestClient:
    """`app` on a loopback TestServer (HTTPS with `ssl`) and a client for it; the caller closes the client."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=ssl)
    return TestClient(server)
