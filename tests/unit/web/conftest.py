"""An aiohttp test client over the web layer with a real SQLite store and a fake scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gpjobs.appkeys import CONFIG_KEY, SCHEDULER_KEY, STORE_KEY
from gpjobs.config import load_config
from gpjobs.store import Store
from gpjobs.web import setup_web
from tests.builders.exports import write_classified_tiles, write_kitti

TASK = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/TrainDeepLearningModel"


class FakeScheduler:
    """Records wake-ups; cancels through the store's guarded request_cancel like the real one."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.wakeups = 0

    def submitted(self) -> None:
        self.wakeups += 1

    async def cancel(self, job_id: str):
        job, _changed = await self.store.request_cancel(job_id)
        return job


class Server:
    def __init__(self, client: TestClient, app: web.Application, share: Path) -> None:
        self.client, self.app, self.share = client, app, share

    @property
    def store(self) -> Store:
        return self.app[STORE_KEY]

    @property
    def scheduler(self) -> FakeScheduler:
        return self.app[SCHEDULER_KEY]

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self.client.request(method, path, **kw)
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/json")
        return await resp.json()

    async def submit(self, headers: dict | None = None, **fields: str) -> Any:
        data = {"in_folder": "/fileShares/default/exports/seg", "output_name": '{"name": "m1"}',
                "model_type": "UNET", "f": "json", **fields}
        return await self.json("POST", f"{TASK}/submitJob", data=data, headers=headers or {})


async def start_server(tmp_path: Path, *, anonymous: bool = True, **settings: Any) -> Server:
    share = tmp_path / "share"
    if not (share / "exports").exists():
        write_classified_tiles(share / "exports", n=2, name="seg")
        write_kitti(share / "exports", n=2, name="det")
    config = load_config(overrides={"data_dir": str(tmp_path / "var"), "file_shares": {"default": str(share)},
                                    "devices": ["cpu"], "anonymous": anonymous, **settings}, env={})
    store = await Store.open(config.database)
    app = web.Application()
    app[CONFIG_KEY] = config
    app[STORE_KEY] = store
    app[SCHEDULER_KEY] = FakeScheduler(store)
    setup_web(app)
    app.on_cleanup.append(lambda _app: store.close())
    client = TestClient(TestServer(app))
    await client.start_server()
    return Server(client, app, share)


@pytest.fixture()
async def server(tmp_path: Path):
    srv = await start_server(tmp_path)
    yield srv
    await srv.client.close()


@pytest.fixture()
async def secured(tmp_path: Path):
    srv = await start_server(tmp_path, anonymous=False)
    yield srv
    await srv.client.close()
