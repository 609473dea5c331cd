"""`gpjobs cert` writes a certificate that a TLS server can use and a client can verify for the named hosts."""

from __future__ import annotations

import importlib.util
import os
import shutil
import ssl
import stat

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gpjobs.cli import main
from gpjobs.commands.cert import CERT_NAME, KEY_NAME, write_self_signed

BACKENDS = [
    pytest.param(
        "cryptography",
        marks=pytest.mark.skipif(importlib.util.find_spec("cryptography") is None, reason="cryptography not installed"),
    ),
    pytest.param(
        "openssl", marks=pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not found")
    ),
]


async def _hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello over tls")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_certificate_serves_https_and_verifies_for_its_hosts(tmp_path, backend):
    assert write_self_signed(tmp_path, ["localhost", "127.0.0.1"], days=2, backend=backend) == backend
    cert, key = tmp_path / CERT_NAME, tmp_path / KEY_NAME
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/", _hello)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_ctx)
    try:
        import aiohttp

        client_ctx = ssl.create_default_context(cafile=str(cert))  # full verification, hostname included
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{server.port}/", ssl=client_ctx) as resp:
                assert await resp.text() == "hello over tls"
            # The same certificate must not verify for a name it was not issued for.
            wrong = ssl.create_default_context(cafile=str(cert))
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(
                    f"https://127.0.0.1:{server.port}/", ssl=wrong, server_hostname="not-this-host.example"
                ):
                    pass
    finally:
        await server.close()


def test_cli_refuses_to_overwrite_without_force(tmp_path, capsys):
    assert main(["cert", "--out", str(tmp_path), "--host", "gpjobs.local"]) == 0
    first = (tmp_path / CERT_NAME).read_bytes()
    assert main(["cert", "--out", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / CERT_NAME).read_bytes() == first
    assert main(["cert", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / CERT_NAME).read_bytes() != first
