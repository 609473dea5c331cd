"""Fixtures for tests/clients: an in-process aiohttp test client (pytest-aiohttp is not a dependency) and
real `gpjobs serve` subprocesses (tests/harness/server.py) training for real, one per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.harness.app import start_app


@pytest.fixture
async def aiohttp_client() -> AsyncIterator[Callable[[web.Application], Awaitable[TestClient]]]:
    """`await aiohttp_client(app)` -> a started TestClient on a loopback port; closed after the test."""
    clients: list[TestClient] = []

    async def start(app: web.Application) -> TestClient:
        clients.append(await start_app(app))
        return clients[-1]

    yield start
    for client in clients:
        await client.close()


def _serve(tmp_path_factory: pytest.TempPathFactory, name: str, *, tls: bool, auth: bool):
    from tests.harness.server import GpjobsServer

    from .tiny_job import SHARE, write_exports

    root = tmp_path_factory.mktemp(name)
    write_exports(root / SHARE)
    server = GpjobsServer(
        root, trainer="real", shares={SHARE: root / SHARE}, tls=tls, auth=auth, settings={"max_attempts": 1}
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    """`gpjobs serve` over plain HTTP in anonymous (loopback) mode."""
    yield from _serve(tmp_path_factory, "http-anon", tls=False, auth=False)


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    """`gpjobs serve` over HTTPS (self-signed, from `gpjobs cert`'s writer) with token auth."""
    yield from _serve(tmp_path_factory, "https-auth", tls=True, auth=True)
