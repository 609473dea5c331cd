"""Benchmark: job-status polls of a real `gpjobs serve` against a bare aiohttp handler, side by side in one run;
a long job's polls against a short one's; and submit -> first training event, warm trainers against cold.

    .venv/bin/python bench/api_poll.py [--pollers 200] [--seconds 5] [--rounds 2] [--long-epochs 10000]
                                       [--latency-runs 3] [--no-latency] [--no-polls]

1. Polls at scale: `--pollers` concurrent clients GET the status of a job that is training (fake child, 0.1 s
   epochs, the server's default 2 s progress flush: a write every 2 s) for `--seconds`, alternating with the same
   clients against a bare aiohttp handler (`--rounds` times each). The job is polled once it has more messages
   than a plain poll returns (RECENT_MESSAGES), so its body keeps one size from round to round; the bare handler
   answers the very bytes gpjobs answered just before each of its rounds. Goals: polls/s >= 0.8 x bare, p99 <=
   1.5 x bare's p99.
2. Poll cost flat in the job's length: a finished job with `--long-epochs` epoch lines against a one-epoch job:
   bytes per poll and polls/s of each (the full list stays reachable with returnMessages=true, paged).
3. Submit -> first training event with the real trainer (torch): one server with `warm_trainers = false`, one
   with `true`, `--latency-runs` tiny jobs each; seconds from the submitJob answer to the child's first message
   (it is up), to the start of its fit loop (data read, model built) and to its first epoch line, as a client
   polling every 5 ms sees them. Goal: the fit loop starts < 1 s after submit with a warm trainer.

The servers are subprocesses on loopback (tests/harness/server.py); the client loop runs in this process, so
every ratio shares the same client overhead on the same (loaded) box.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpjobs.domain import Job, JobStatus, MessageType  # noqa: E402
from gpjobs.store import Store  # noqa: E402
from gpjobs.web.gp_jobs import RECENT_MESSAGES  # noqa: E402
from tests.builders.exports import write_classified_tiles  # noqa: E402
from tests.harness.server import TASK, GpjobsServer  # noqa: E402

OWN_MESSAGES = {"Submitted.", "Executing..."}
FIT_STARTS = "Training UNET (RESNET18) for up to"  # engine.py, when data and model are ready
TERMINAL = ("esriJobSucceeded", "esriJobFailed", "esriJobTimedOut", "esriJobCancelled")
BARE_SERVER = """
import sys
from pathlib import Path
from aiohttp import web
BODY = Path(sys.argv[2]).read_bytes()  # the bytes gpjobs answered for the job just before this round
async def handle(request):
    return web.Response(body=BODY, content_type="application/json", charset="utf-8")
app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, backlog=1024,  # as gpjobs serve
            print=lambda *a: print("ready", flush=True))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def hammer(url: str, pollers: int, seconds: float, pid: int) -> dict[str, float]:
    """`pollers` concurrent loops GETting `url` for `seconds`: polls/s, latency percentiles, bytes per poll, and
    the CPU the server (process `pid`) spent per poll, which the client's share of the box does not blur."""
    latencies: list[float] = []
    sizes: list[int] = []
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
            sizes.append(len(body))

    connector = aiohttp.TCPConnector(limit=pollers)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as resp:  # warm up one connection
            await resp.read()
        start, cpu = time.perf_counter(), cpu_seconds(pid)
        stop_at = start + seconds
        await asyncio.gather(*(poller(session) for _ in range(pollers)))
        elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "errors": errors,
        "n": len(latencies),
        "bytes": statistics.median(sizes),
        "cpu_ms": 1000 * cpu / max(1, len(latencies)),
    }


def show(name: str, r: dict[str, float]) -> None:
    print(
        f"  {name:>16}: {r['rps']:7.0f} polls/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
        f"{r['bytes']:7.0f} B/poll  server CPU {r['cpu_ms']:.3f} ms/poll  errors {r['errors']}  (n={r['n']})"
    )


def seed_finished_jobs(db_path: Path, long_epochs: int) -> tuple[str, str]:
    """A finished job with `long_epochs` epoch lines and a finished one-epoch job, written before the server
    starts (through the store, as the scheduler would have written them)."""

    async def seed() -> tuple[str, str]:
        store = await Store.open(db_path)
        ids = []
        try:
            for epochs in (long_epochs, 1):
                job = await store.create_job(
                    Job(
                        job_id="j" + os.urandom(16).hex(),
                        owner="anonymous",
                        status=JobStatus.SUBMITTED,
                        model_type="UNET",
                        spec={},
                    )
                )
                await store.claim_next_job("cpu", "bench-seed")
                lines = [
                    (
                        MessageType.INFORMATIVE,
                        (
                            f"Epoch {e}/{epochs}, train_loss {1 / e:.4f}, valid_loss "
                            f"{1.1 / e:.4f}, accuracy {1 - 0.5 / e:.4f}, dice "
                            f"{1 - 0.6 / e:.4f}, time 1.2 s"
                        ),
                    )
                    for e in range(1, epochs + 1)
                ]
                for start in range(0, len(lines), 1000):
                    await store.record_progress(job.job_id, messages=lines[start : start + 1000], progress=50.0)
                await store.transition(
                    job.job_id,
                    JobStatus.SUCCEEDED,
                    result={"uri": "/fileShares/default/m.dlpk"},
                    messages=[(MessageType.INFORMATIVE, "Training Finished")],
                )
                ids.append(job.job_id)
        finally:
            await store.close()
        return ids[0], ids[1]

    return asyncio.run(seed())


def polls_at_scale(root: Path, args) -> None:
    print(
        f"1. polls at scale: {args.pollers} concurrent pollers, {args.seconds:g} s per measurement, "
        f"{args.rounds} alternating round(s)"
    )
    long_id, short_id = seed_finished_jobs(root / "var" / "gpjobs.sqlite3", args.long_epochs)
    server = GpjobsServer(
        root,
        env={"GPJOBS_FAKE_BEHAVIOUR": "slow", "GPJOBS_FAKE_EPOCH_S": "0.1"},
        settings={"max_queued_per_user": 0, "progress_flush_s": 2.0},
    )
    server.start()
    port = free_port()
    bare: subprocess.Popen | None = None
    body_file = root / "bare_body.json"
    try:
        job = server.submit(
            in_folder="/fileShares/default/exports/seg",
            model_type="UNET",
            output_name='{"name": "bench_long"}',
            max_epochs="10000",
        )
        running_url = f"{server.base_url}{TASK}/jobs/{job['jobId']}?f=json"
        wait_full_window(server, job["jobId"])
        bare_url = f"http://127.0.0.1:{port}/jobs/x?f=json"
        runs: dict[str, list[dict]] = {"bare": [], "gpjobs": []}
        for _ in range(args.rounds):
            body_file.write_bytes(urllib.request.urlopen(running_url, timeout=30).read())
            bare = start_bare(port, body_file, bare)
            runs["bare"].append(asyncio.run(hammer(bare_url, args.pollers, args.seconds, bare.pid)))
            runs["gpjobs"].append(asyncio.run(hammer(running_url, args.pollers, args.seconds, server.process.pid)))
        assert server.job(job["jobId"])["jobStatus"] == "esriJobExecuting"
        for name, results in runs.items():
            for i, r in enumerate(results):
                show(f"{name} #{i + 1}", r)
        bare_rps = statistics.mean(r["rps"] for r in runs["bare"])
        bare_p99 = statistics.mean(r["p99_ms"] for r in runs["bare"])
        ours_rps = statistics.mean(r["rps"] for r in runs["gpjobs"])
        ours_p99 = statistics.mean(r["p99_ms"] for r in runs["gpjobs"])
        bare_cpu = statistics.mean(r["cpu_ms"] for r in runs["bare"])
        ours_cpu = statistics.mean(r["cpu_ms"] for r in runs["gpjobs"])
        print(
            f"  polls/s gpjobs / bare: {ours_rps / bare_rps:.2f} (goal >= 0.8); "
            f"p99 gpjobs / bare: {ours_p99 / bare_p99:.2f} (goal <= 1.5); "
            f"server CPU per poll gpjobs / bare: {ours_cpu / bare_cpu:.2f}"
        )

        print(
            f"2. poll cost in the job's length: a finished {args.long_epochs}-epoch job vs a 1-epoch job, "
            f"{args.pollers} pollers"
        )
        long_url = f"{server.base_url}{TASK}/jobs/{long_id}?f=json"
        short_url = f"{server.base_url}{TASK}/jobs/{short_id}?f=json"
        long_r = asyncio.run(hammer(long_url, args.pollers, args.seconds, server.process.pid))
        short_r = asyncio.run(hammer(short_url, args.pollers, args.seconds, server.process.pid))
        show(f"{args.long_epochs}-epoch job", long_r)
        show("1-epoch job", short_r)
        page = server.get_json(f"{TASK}/jobs/{long_id}", returnMessages="true")
        print(
            f"  long / short: {long_r['bytes'] / short_r['bytes']:.1f}x bytes per poll, "
            f"{long_r['rps'] / short_r['rps']:.2f}x polls/s, {long_r['cpu_ms'] / short_r['cpu_ms']:.2f}x server "
            f"CPU per poll; returnMessages=true: {len(page['messages'])} of "
            f"{page['messageCount']} messages per page ({len(json.dumps(page)):,} B), next page at "
            f"messageStart={page['messageNextStart']}"
        )
        server.post_json(f"{TASK}/jobs/{job['jobId']}/cancel")
        server.wait(job["jobId"], timeout=60)
    finally:
        if bare is not None:
            bare.terminate()
        server.stop()


def wait_full_window(server: GpjobsServer, job_id: str, timeout: float = 120) -> None:
    """Until the executing job has more messages than a plain poll carries: its body stops growing."""
    deadline = time.monotonic() + timeout
    while True:
        info = server.job(job_id)
        if info["jobStatus"] == "esriJobExecuting" and info.get("messageCount", 0) > RECENT_MESSAGES:
            return
        assert time.monotonic() < deadline and info["jobStatus"] not in TERMINAL, info["jobStatus"]
        time.sleep(0.5)


def start_bare(port: int, body_file: Path, previous: subprocess.Popen | None) -> subprocess.Popen:
    """The bare aiohttp server answering `body_file`'s bytes (replacing `previous`) once it listens."""
    if previous is not None:
        previous.terminate()
        previous.wait(timeout=30)
    bare = subprocess.Popen(
        [sys.executable, "-c", BARE_SERVER, str(port), str(body_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert bare.stdout is not None and b"ready" in bare.stdout.readline()
    return bare


def first_events(server: GpjobsServer, runs: int, warm: bool) -> list[tuple[float, float, float]]:
    """Seconds from the submitJob answer to: the child's first word (it is up), the start of the fit loop (data
    read, model built: `Training <model> (<backbone>) for up to ...`), and the first epoch line."""
    out = []
    for i in range(runs):
        if warm:
            wait_warm_ready(server, i + 1)
        t0 = time.perf_counter()
        job_id = server.submit(
            in_folder="/fileShares/default/exports/seg",
            model_type="UNET",
            backbone_model="RESNET18",
            output_name=f'{{"name": "latency_{int(warm)}_{i}"}}',
            max_epochs="1",
            learning_rate="0.001",
            batch_size="4",
        )["jobId"]
        up = fit = epoch = None
        while epoch is None:
            info = server.job(job_id)
            now = time.perf_counter() - t0
            said = [m["description"] for m in info.get("messages", [])]
            if up is None and any(text not in OWN_MESSAGES for text in said):
                up = now
            if fit is None and any(text.startswith(FIT_STARTS) for text in said):
                fit = now
            if any(text.startswith("Epoch 1/") for text in said) or info["jobStatus"] in TERMINAL:
                epoch = now
                up, fit = up or now, fit or now
            time.sleep(0.005)
        out.append((up, fit, epoch))
        done = server.wait(job_id, timeout=300)
        assert done["jobStatus"] == "esriJobSucceeded", server.diagnose(job_id)
    return out


def wait_warm_ready(server: GpjobsServer, count: int, timeout: float = 180) -> None:
    """Until the server's log says `count` warm children have finished their imports."""
    deadline = time.monotonic() + timeout
    while server.log_tail(10**7).count('"warm trainer ready"') < count:
        assert time.monotonic() < deadline, "no warm trainer became ready"
        time.sleep(0.1)


def warm_vs_cold(root: Path, runs: int) -> None:
    print(f"3. submit -> first training event, real trainer (torch), {runs} tiny UNET jobs per mode")
    results = {}
    for warm in (False, True):
        here = root / ("warm" if warm else "cold")
        write_classified_tiles(here / "share" / "exports", n=8, size=64, name="seg")
        server = GpjobsServer(here, trainer="real", settings={"warm_trainers": warm, "max_queued_per_user": 0})
        server.start()
        try:
            results[warm] = first_events(server, runs, warm)
        finally:
            server.stop()
    print("  seconds after submit: child up / fit loop starts / first epoch line")
    for warm, times in results.items():
        medians = [statistics.median(t[k] for t in times) for k in range(3)]
        print(
            f"  {'warm' if warm else 'cold'}: "
            + ", ".join(" / ".join(f"{v:.2f}" for v in t) for t in times)
            + "; median "
            + " / ".join(f"{v:.2f} s" for v in medians)
        )
    cold, warm = (statistics.median(t[1] for t in results[k]) for k in (False, True))
    print(f"  fit loop starts: warm {warm:.2f} s, cold {cold:.2f} s, warm / cold {warm / cold:.2f} (goal warm < 1 s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--long-epochs", type=int, default=10_000)
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--no-latency", action="store_true", help="skip part 3 (it imports torch twice)")
    parser.add_argument("--no-polls", action="store_true", help="skip parts 1 and 2")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gpjobs-bench-") as tmp:  # packages and checkpoints: GBs
        root = Path(tmp)
        write_classified_tiles(root / "share" / "exports", n=8, name="seg")
        print(f"machine: {os.cpu_count()} cpu(s), load {os.getloadavg()[0]:.1f}; client and servers on one box")
        if not args.no_polls:
            polls_at_scale(root, args)
        if not args.no_latency:
            warm_vs_cold(root / "latency", args.latency_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
