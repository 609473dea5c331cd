"""Benchmark: job-status polling throughput of the real server while a job trains, against a bare aiohttp
handler returning constant JSON, measured side by side in one run; plus submit -> first training event.

    .venv/bin/python bench/api_poll.py [--pollers 200] [--seconds 5] [--real-trainer]

Both servers run as subprocesses on loopback and are driven by the same client loop in this process.
The job runs the fake training child (tests/fakes/fake_trainer.py, slow mode) unless --real-trainer,
so the poll numbers measure the server, not torch. Target: ratio >= 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "acceptance"))

from tests.builders.exports import write_classified_tiles  # noqa: E402
from gpjobs_server_proc import TASK_PATH, ServerProcess  # noqa: E402

BARE_SERVER = """
import sys, orjson
from aiohttp import web
BODY = orjson.dumps({"jobId": "j" + "0" * 32, "jobStatus": "esriJobExecuting",
                     "progress": {"type": "default", "message": "", "percentage": 42},
                     "messages": [{"type": "esriJobMessageTypeInformative", "description": "Submitted."},
                                  {"type": "esriJobMessageTypeInformative", "description": "Executing..."}]})
async def handle(request):
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=lambda *a: print("ready", flush=True))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def hammer(url: str, pollers: int, seconds: float) -> dict[str, float]:
    """`pollers` concurrent loops GETting `url` for `seconds`; returns req/s and latency percentiles."""
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0

    async def poller(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    if resp.status != 200 or b"jobStatus" not in body:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=pollers)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as resp:  # warm up one connection
            await resp.read()
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(poller(session) for _ in range(pollers)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))], "errors": errors, "n": len(latencies)}


def first_event_latency(server: ServerProcess, runs: int) -> list[tuple[float, float]]:
    """Seconds from the submitJob answer to (the first message the child sends, its first progress > 0),
    as a poller sees them."""
    own = {"Submitted.", "Executing..."}
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        job_id = server.submit(in_folder="/fileShares/default/exports/seg", model_type="UNET",
                               output_name=f'{{"name": "latency_{i}"}}', max_epochs="1",
                               learning_rate="0.001")["jobId"]
        first_event = first_progress = None
        while first_progress is None:
            info = server.job(job_id)
            now = time.perf_counter() - t0
            if first_event is None and any(m["description"] not in own for m in info.get("messages", [])):
                first_event = now
            if ((info.get("progress") or {}).get("percentage") or 0) > 0:
                first_progress = now
                first_event = first_event or now
            if info["jobStatus"] in ("esriJobSucceeded", "esriJobFailed"):
                first_progress = first_progress or now
                first_event = first_event or now
            time.sleep(0.005)
        out.append((first_event, first_progress))
        server.wait(job_id, timeout=300)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--real-trainer", action="store_true", help="use python -m gpjobs.training (torch)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gpjobs-bench-"))
    share = tmp / "share"
    write_classified_tiles(share / "exports", n=8, name="seg")
    env = {"GPJOBS_FAKE_BEHAVIOUR": "slow", "GPJOBS_FAKE_EPOCH_S": "2", "GPJOBS_MAX_QUEUED_PER_USER": "0"}
    if args.real_trainer:
        env["GPJOBS_TRAINER_COMMAND"] = f"{sys.executable} -m gpjobs.training"
    server = ServerProcess(tmp / "var", share, **env)
    if args.real_trainer:
        server.env["GPJOBS_TRAINER_COMMAND"] = f"{sys.executable} -m gpjobs.training"
    server.start()
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert bare.stdout is not None and b"ready" in bare.stdout.readline()
        # A job that trains for the whole measurement (fake child: many 2 s epochs).
        job = server.submit(in_folder="/fileShares/default/exports/seg", model_type="UNET",
                            output_name='{"name": "bench_long"}', max_epochs="1000")
        server.wait(job["jobId"], statuses={"esriJobExecuting"})
        job_url = f"{server.base}{TASK_PATH}/jobs/{job['jobId']}?f=json"
        bare_url = f"http://127.0.0.1:{port}/jobs/x?f=json"
        results = {}
        for name, url in (("bare", bare_url), ("gpjobs", job_url), ("bare_again", bare_url)):
            results[name] = asyncio.run(hammer(url, args.pollers, args.seconds))
        status = server.job(job["jobId"])
        assert status["jobStatus"] == "esriJobExecuting", status
        server.request(f"{TASK_PATH}/jobs/{job['jobId']}/cancel")
        server.wait(job["jobId"], timeout=60)
        latencies = first_event_latency(server, args.latency_runs)
    finally:
        bare.terminate()
        if server.proc and server.proc.poll() is None:
            server.terminate()

    bare_rps = (results["bare"]["rps"] + results["bare_again"]["rps"]) / 2
    print(f"machine: {os.cpu_count()} cpu(s); {args.pollers} concurrent pollers, {args.seconds:g} s each, "
          "client in the same box")
    for name, r in results.items():
        print(f"{name:>11}: {r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
              f"errors {r['errors']}  (n={r['n']})")
    print(f"poll ratio gpjobs/bare: {results['gpjobs']['rps'] / bare_rps:.2f}  (target >= 0.5)")
    trainer = "real trainer (torch)" if args.real_trainer else "fake trainer"
    print(f"submit -> first child event / first progress ({trainer}): "
          + ", ".join(f"{a:.2f} s / {b:.2f} s" for a, b in latencies)
          + f"; median {statistics.median(a for a, _ in latencies):.2f} s / "
          f"{statistics.median(b for _, b in latencies):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
