"""Issue 11, "Measure": a seeded fuzz run of malformed requests across every route and parameter against a real
`gpjobs serve` (token auth on, the fake training child) on loopback.

Asserted: 0 unhandled exceptions in the server log, 0 answers outside the Esri shape under the Esri URL
spaces (and no 5xx anywhere), 0 job rows but those of accepted submits, and a server that still answers and
still runs a job to the end afterwards. `make test` runs a short run; `make test-heavy` the long one.
Another seed: GPJOBS_FUZZ_SEED=<n> (a failure prints the seed and the offending requests).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.builders.exports import write_classified_tiles
from tests.harness.server import GpjobsServer
from tests.security.fuzz import ADMIN, TASK, FuzzRequests, Names, Request, check_response, send

SEED = int(os.environ.get("GPJOBS_FUZZ_SEED", "11"))
CONCURRENCY = 4
REQUEST_TIMEOUT_S = 120.0  # generous: the box is shared; a slow answer is not a wrong one


def mint_tokens(db_path: Path) -> tuple[str, str]:
    from gpjobs.store import Store

    async def mint() -> tuple[str, str]:
        store = await Store.open(db_path)
        try:
            return await store.create_token("root", "admin"), await store.create_token("analyst", "user")
        finally:
            await store.close()

    return asyncio.run(mint())


@pytest.fixture
def secured_server(tmp_path: Path):
    share = tmp_path / "share"
    write_classified_tiles(share / "exports", n=4, size=32, name="seg")
    (share / "models").mkdir()
    server = GpjobsServer(
        tmp_path, shares={"default": share}, auth=True, settings={"max_queued_per_user": 0, "log_level": "info"}
    )
    server.data_dir.mkdir(parents=True)
    admin, user = mint_tokens(server.data_dir / "gpjobs.sqlite3")
    server.start(timeout=180)
    try:
        yield (
            server,
            Names(export="/fileShares/default/exports/seg", admin_token=admin, user_token=user, username="analyst"),
        )
    finally:
        server.stop()


def call(server: GpjobsServer, path: str, token: str, **fields: str) -> dict:
    request = urllib.request.Request(
        server.base_url + path,
        data=urllib.parse.urlencode({"f": "json", **fields}).encode(),
        headers={"X-Esri-Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def all_job_ids(server: GpjobsServer, admin: str) -> set[str]:
    ids: set[str] = set()
    start = 1
    while start != -1:
        page = call(server, ADMIN + "/query", admin, number="1000", start=str(start))
        ids |= {row["jobID"] for row in page["results"]}
        start = page["nextStart"]
    return ids


async def fuzz(port: int, names: Names, count: int, seed: int) -> tuple[list[str], set[str], set[str], int]:
    """Send `count` requests; returns (problems, job ids of accepted submits, of deleted jobs, protocol-level
    refusals)."""
    requests = FuzzRequests(seed, names)
    problems: list[str] = []
    accepted: set[str] = set()
    deleted: set[str] = set()
    protocol_errors = 0
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(request: Request) -> None:
        nonlocal protocol_errors
        async with gate:
            try:
                response = await send(port, request, REQUEST_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                problems.append(f"{type(exc).__name__} {exc}: {request.method} {request.target[:150]!r}")
                return
        protocol_errors += request.protocol_error
        if response is None:
            if not request.protocol_error:
                problems.append(f"no answer: {request.method} {request.target[:150]!r}")
            return
        wrong = check_response(request, response)
        if wrong:
            problems.append(
                f"{wrong}: {request.method} {request.target[:150]!r} {request.headers[:3]!r} "
                f"body {request.body[:150]!r} -> {response.body[:300]!r}"
            )
        elif response.status == 200 and request.method != "HEAD" and request.path.endswith(("/submitJob", "/delete")):
            try:
                body = json.loads(response.body)
            except ValueError:
                return
            if isinstance(body, dict) and "jobId" in body:
                accepted.add(body["jobId"])
                names.job_ids.append(body["jobId"])
            elif isinstance(body, dict) and body.get("status") == "success":  # an admin deleted a job
                deleted.add(body["jobID"])

    batch = []
    for _ in range(count):
        batch.append(asyncio.create_task(one(requests.next())))
        if len(batch) >= 50:  # later requests name the jobs earlier ones created
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)
    return problems, accepted, deleted, protocol_errors


def log_problems(log_path: Path) -> list[str]:
    """Server log lines that report an unhandled exception (JSON lines: level error/critical or a traceback)."""
    bad = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                bad.append(line[:300])
            continue
        if not isinstance(entry, dict):
            continue
        if entry.get("level") in ("error", "critical") or "exception" in entry or "Traceback" in line:
            bad.append(line[:600])
    return bad


def run_fuzz(server: GpjobsServer, names: Names, count: int, seed: int) -> dict[str, int]:
    port = int(server.base_url.rsplit(":", 1)[1])
    seeded = {
        call(
            server,
            TASK + "/submitJob",
            names.user_token,
            in_folder=names.export,
            model_type="UNET",
            output_name=json.dumps({"name": f"seeded{i}"}),
            arguments='{"chip_size": "32"}',
            max_epochs="1",
        )["jobId"]
        for i in range(2)
    }  # real jobs for the job routes to name
    names.job_ids.extend(sorted(seeded))
    started = time.monotonic()
    problems, accepted, deleted, protocol_errors = asyncio.run(fuzz(port, names, count, seed))
    accepted |= seeded
    elapsed = time.monotonic() - started
    assert not problems, f"seed {seed}: {len(problems)} of {count} answers wrong:\n" + "\n".join(problems[:15])
    # Responsive afterwards: it answers, and a job still runs to the end through the scheduler.
    assert "tasks" in call(server, TASK.rsplit("/", 1)[0], names.admin_token)
    job = call(
        server,
        TASK + "/submitJob",
        names.user_token,
        in_folder=names.export,
        model_type="UNET",
        output_name=json.dumps({"name": "after_the_fuzz"}),
        arguments='{"chip_size": "32"}',
        max_epochs="1",
    )
    deadline = time.monotonic() + 180
    while call(server, f"{TASK}/jobs/{job['jobId']}", names.user_token)["jobStatus"] not in (
        "esriJobSucceeded",
        "esriJobFailed",
    ):
        assert time.monotonic() < deadline, "the job submitted after the fuzz never finished"
        time.sleep(0.2)
    assert call(server, f"{TASK}/jobs/{job['jobId']}", names.user_token)["jobStatus"] == "esriJobSucceeded"
    # No job row but those of accepted submits (less those an admin request deleted).
    assert all_job_ids(server, names.admin_token) == (accepted - deleted) | {job["jobId"]}
    logged = log_problems(server.log_path)
    assert not logged, f"seed {seed}: unhandled exceptions in the server log:\n" + "\n".join(logged[:10])
    return {
        "requests": count,
        "accepted_jobs": len(accepted),
        "deleted_jobs": len(deleted),
        "protocol_errors": protocol_errors,
        "seconds": round(elapsed, 1),
    }


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzz_short(secured_server) -> None:
    server, names = secured_server
    stats = run_fuzz(server, names, 400, SEED)
    print("fuzz:", stats)


@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_fuzz_heavy(secured_server) -> None:
    server, names = secured_server
    stats = run_fuzz(server, names, int(os.environ.get("GPJOBS_FUZZ_COUNT", "3000")), SEED + 1)
    print("fuzz:", stats)
