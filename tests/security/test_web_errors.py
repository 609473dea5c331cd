"""Issue 11, defect 4: input that used to reach an unhandled exception (a code-500 body and a traceback in
the log) gets an Esri error saying what was wrong, and the server log stays free of tracebacks."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
import pytest
import structlog
from aiohttp.test_utils import TestServer

from gpjobs.app import create_app
from gpjobs.appkeys import STORE_KEY
from gpjobs.config import load_config
from gpjobs.domain import Job, JobStatus, new_job_id

TASK = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/TrainDeepLearningModel"
ADMIN = "/arcgis/admin/services/System/RasterAnalysisTools.GPServer/jobs"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def app_server(tmp_path: Path, share: Path):
    config = load_config(
        overrides={
            "data_dir": str(tmp_path / "var"),
            "file_shares": {"default": str(share)},
            "devices": ["cpu"],
            "anonymous": False,
        },
        env={},
    )
    server = TestServer(create_app(config, run_scheduler=False), port=0)
    await server.start_server()
    yield server
    await server.close()


def raw_request(method: str, target: bytes, headers: dict[str, bytes | str], body: bytes = b"") -> bytes:
    lines = [
        method.encode() + b" " + target + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Connection: close",
        b"Content-Length: " + str(len(body)).encode(),
    ]
    lines += [k.encode() + b": " + (v if isinstance(v, bytes) else v.encode("latin-1")) for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def send(server: TestServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh loopback connection, as raw bytes (clients would not send these)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


async def token(server: TestServer, role: str = "admin") -> str:
    return await server.app[STORE_KEY].create_token("root" if role == "admin" else "alice", role)


CASES = [  # (name, method, target, headers, body, expected code in the body, expected detail text)
    ("invalid UTF-8 form", "POST", TASK + "/submitJob", FORM, b"f=json&in_folder=\xff\xfe", 400, "not valid UTF-8"),
    (
        "unknown charset",
        "POST",
        TASK + "/submitJob",
        {"Content-Type": "application/x-www-form-urlencoded; charset=nope"},
        b"f=json",
        400,
        "charset",
    ),
    (
        "malformed multipart",
        "POST",
        TASK + "/submitJob",
        {"Content-Type": "multipart/form-data; boundary=zz"},
        b"--zz\r\nnonsense",
        400,
        "multipart/form-data body is malformed",
    ),
    (
        "multipart without boundary",
        "POST",
        TASK + "/submitJob",
        {"Content-Type": "multipart/form-data"},
        b"x",
        400,
        "multipart/form-data body is malformed",
    ),
    (
        "multipart part in an unknown charset",
        "POST",
        TASK + "/submitJob",
        {"Content-Type": "multipart/form-data; boundary=zz"},
        (
            b'--zz\r\nContent-Disposition: form-data; name="f"\r\nContent-Type: text/plain; charset=nope\r\n\r\n'
            b"json\r\n--zz--\r\n"
        ),
        400,
        "charset",
    ),
    (
        "bad gzip",
        "POST",
        TASK + "/submitJob",
        {**FORM, "Content-Encoding": "gzip"},
        b"not gzip at all",
        400,
        "Content-Encoding gzip",
    ),
    (
        "bad deflate",
        "POST",
        "/sharing/rest/generateToken",
        {**FORM, "Content-Encoding": "deflate"},
        b"zzzz",
        400,
        "Content-Encoding deflate",
    ),
    (
        "unsupported Content-Encoding",
        "POST",
        TASK + "/submitJob",
        {**FORM, "Content-Encoding": "br"},
        b"x",
        400,
        "Content-Encoding br is not supported",
    ),
    (
        "compressed multipart",
        "POST",
        TASK + "/submitJob",
        {"Content-Type": "multipart/form-data; boundary=zz", "Content-Encoding": "gzip"},
        b"x",
        400,
        "compressed multipart/form-data body is not supported",
    ),
    (
        "truncated gzip",
        "POST",
        TASK + "/submitJob",
        {**FORM, "Content-Encoding": "gzip"},
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
        400,
        "ends before its Content-Encoding gzip stream",
    ),
    ("huge start", "GET", ADMIN + "?f=json&start=" + "9" * 40, {}, b"", 400, "start: must be a whole number"),
    ("huge startTime", "GET", ADMIN + "/query?f=json&startTime=" + "9" * 30, {}, b"", 400, "startTime"),
    ("huge endTime", "GET", ADMIN + "?f=json&endTime=-" + "9" * 30, {}, b"", 400, "endTime"),
    ("5000-digit number", "GET", ADMIN + "?f=json&number=" + "9" * 5000, {}, b"", 400, "is not a whole number"),
    ("non-ASCII token header", "GET", TASK + "?f=json", {"Authorization": b"Bearer \xff\xfe\x80"}, b"", 498, None),
    (
        "non-ASCII Esri token header",
        "GET",
        TASK + "/jobs/j" + "0" * 32 + "?f=json",
        {"X-Esri-Authorization": b"Bearer gpj_\xc3\xa9"},
        b"",
        498,
        None,
    ),
    ("huge token", "GET", TASK + "?f=json&token=" + "a" * 5000, {}, b"", 498, None),
    (
        "chip_size infinity",
        "POST",
        TASK + "/submitJob",
        FORM,
        (
            b"f=json&model_type=UNET&in_folder=/fileShares/default/exports/seg&output_name=m"
            b"&arguments=%7B%22chip_size%22%3A1e999%7D"
        ),
        400,
        "chip_size",
    ),
    (
        "nesting bomb",
        "POST",
        TASK + "/submitJob",
        FORM,
        (b"f=json&model_type=UNET&in_folder=/fileShares/default/exports/seg&output_name=m&context=" + b"%5B" * 100_000),
        400,
        "context",
    ),
]


@pytest.mark.parametrize("name, method, target, headers, body, code, detail", CASES, ids=[c[0] for c in CASES])
async def test_malformed_input_gets_an_esri_error_and_no_traceback(
    app_server, caplog, name, method, target, headers, body, code, detail
) -> None:
    admin = await token(app_server)
    if "Authorization" not in str(headers) and "token=" not in target:
        headers = {**headers, "X-Esri-Authorization": f"Bearer {admin}"}
    caplog.set_level(logging.WARNING)
    with structlog.testing.capture_logs() as logs:
        status, response_headers, raw = await send(app_server, raw_request(method, target.encode(), headers, body))
    assert status == 200 and response_headers["content-type"].startswith("application/json"), raw[:300]
    error = orjson.loads(raw)["error"]
    assert set(error) == {"code", "message", "details"} and error["code"] == code, error
    assert all(isinstance(d, str) for d in error["details"])
    if detail:
        assert any(detail in d for d in error["details"]), error
    assert not [e for e in logs if e.get("log_level") in ("error", "critical") or "exc_info" in e], logs
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


async def test_compressed_bodies_are_read_by_the_form_reader(app_server) -> None:
    """aiohttp's own inflating answered a short bad deflate body in plain text before any handler ran, and a
    longer one left the connection hanging; the form reader inflates now: valid gzip and deflate bodies work,
    and after a bad one the next request on the same connection is answered."""
    import gzip
    import zlib

    admin = await token(app_server)
    form = b"f=json&in_folder=%2FfileShares%2Fdefault%2Fexports%2Fseg&output_name=m&model_type=UNET"
    for coding, body in (("gzip", gzip.compress(form)), ("deflate", zlib.compress(form))):
        _, _, raw = await send(
            app_server,
            raw_request(
                "POST",
                (TASK + "/submitJob").encode(),
                {**FORM, "Content-Encoding": coding, "X-Esri-Authorization": f"Bearer {admin}"},
                body,
            ),
        )
        assert orjson.loads(raw)["jobStatus"] == "esriJobSubmitted", raw
    bad = raw_request(
        "POST",
        (TASK + "/submitJob").encode(),
        {**FORM, "Content-Encoding": "gzip", "X-Esri-Authorization": f"Bearer {admin}"},
        b"not gzip" * 20,
    ).replace(b"Connection: close\r\n", b"")
    then = raw_request("GET", (TASK + "?f=json").encode(), {})
    reader, writer = await asyncio.open_connection("127.0.0.1", app_server.port)
    writer.write(bad + then)
    await writer.drain()
    both = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert both.count(b"HTTP/1.1 200 OK") == 2
    assert b"cannot be decoded with Content-Encoding gzip" in both and b'"name":"TrainDeepLearningModel"' in both
    bomb = raw_request(
        "POST", (TASK + "/submitJob").encode(), {**FORM, "Content-Encoding": "gzip"}, gzip.compress(b"a" * (4 << 20))
    )  # 4 MiB inflated from a few KiB
    _, _, raw = await send(app_server, bomb)
    assert orjson.loads(raw)["error"]["code"] == 413


async def test_admin_job_detail_has_no_top_level_error_key(app_server) -> None:
    """A top-level "error" makes Esri clients treat the whole answer as a failed request."""
    admin = await token(app_server)
    store = app_server.app[STORE_KEY]
    ok = await store.create_job(
        Job(job_id=new_job_id(), owner="alice", status=JobStatus.SUBMITTED, model_type="UNET"), []
    )
    failed = await store.create_job(
        Job(job_id=new_job_id(), owner="alice", status=JobStatus.FAILED, model_type="UNET", error="in_folder is gone"),
        [],
    )
    for job, message in ((ok, None), (failed, "in_folder is gone")):
        _, _, raw = await send(
            app_server,
            raw_request("GET", f"{ADMIN}/{job.job_id}?f=json".encode(), {"X-Esri-Authorization": f"Bearer {admin}"}),
        )
        body = orjson.loads(raw)
        assert "error" not in body and body["jobID"] == job.job_id
        assert body.get("errorMessage") == message
    _, _, raw = await send(
        app_server, raw_request("GET", f"{ADMIN}?f=json".encode(), {"X-Esri-Authorization": f"Bearer {admin}"})
    )
    assert all("error" not in row for row in orjson.loads(raw)["results"])


async def test_a_request_that_is_not_http_is_one_warning_line(app_server, caplog) -> None:
    """Refused by aiohttp's parser before any handler runs (no Esri request exists yet); the log says so in
    one line instead of a traceback per probe."""
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    status, _, _ = await send(app_server, raw_request("GET", TASK.encode() + b"?f=json&x=\xff", {}))
    assert status == 400
    refused = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert refused and all(r.levelno == logging.WARNING and not r.exc_info for r in refused), caplog.text
    assert "malformed HTTP request refused" in refused[0].getMessage()


async def test_job_page_of_a_file_share_output_renders(app_server) -> None:
    """Found by the fuzz run: the html job page of a job that wrote its package to a file share was a 500
    (the template asked the {"uri"} result for an item id)."""
    user = await token(app_server, "user")
    job = await app_server.app[STORE_KEY].create_job(
        Job(
            job_id=new_job_id(),
            owner="alice",
            status=JobStatus.SUCCEEDED,
            model_type="UNET",
            result={"uri": "/fileShares/default/models/m/m.dlpk"},
        ),
        [],
    )
    status, headers, raw = await send(
        app_server,
        raw_request("GET", f"{TASK}/jobs/{job.job_id}?f=html".encode(), {"X-Esri-Authorization": f"Bearer {user}"}),
    )
    assert status == 200 and headers["content-type"].startswith("text/html"), raw[:300]
    assert b"Written to <code>/fileShares/default/models/m/m.dlpk</code>" in raw


async def test_portal_paging_with_a_huge_start_is_clamped(app_server) -> None:
    """Found by the fuzz run: start=10**100 on a portal listing was echoed back and orjson refused the
    integer (a 500)."""
    user = await token(app_server, "user")
    _, _, raw = await send(
        app_server,
        raw_request(
            "GET",
            ("/sharing/rest/content/users/alice?f=json&start=1" + "0" * 100).encode(),
            {"X-Esri-Authorization": f"Bearer {user}"},
        ),
    )
    body = orjson.loads(raw)
    assert "error" not in body and body["start"] == 2**53 and body["items"] == [] and body["nextStart"] == -1
