"""An aiohttp test client over the web layer with a real SQLite store and a recording scheduler
(tests/harness/app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gpjobs.appkeys import SCHEDULER_KEY, STORE_KEY
from gpjobs.store import Store
from tests.builders.exports import write_classified_tiles, write_kitti
from tests.harness.app import RecordingScheduler, app_config, make_app, start_app

TASK = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/TrainDeepLearningModel"


class Server:
    def __init__(self, client: TestClient, share: Path) -> None:
        self.client, self.share = client, share

    @property
    def app(self) -> web.Application:
        return self.client.app

    @property
    def store(self) -> Store:
        return self.app[STORE_KEY]

    @property
    def scheduler(self) -> RecordingScheduler:
        return self.app[SCHEDULER_KEY]

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self.client.request(method, path, **kw)
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/json")
        return await resp.json()

    async def submit(self, headers: dict | None = None, **fields: str) -> Any:
        data = {
            "in_folder": "/fileShares/default/exports/seg",
            "output_name": '{"name": "m1"}',
            "model_type": "UNET",
            "f": "json",
            **fields,
        }
        return await self.json("POST", f"{TASK}/submitJob", data=data, headers=headers or {})


async def start_server(tmp_path: Path, *, anonymous: bool = True, **settings: Any) -> Server:
    """A started server (the caller closes `.client`); exports `seg` and `det` in the default file share."""
    share = tmp_path / "share"
    if not (share / "exports").exists():
        write_classified_tiles(share / "exports", n=2, name="seg")
        write_kitti(share / "exports", n=2, name="det")
    app = make_app(
        app_config(tmp_path, file_shares={"default": str(share)}, anonymous=anonymous, **settings), portal=False
    )
    return Server(await start_app(app), share)


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
