"""Benchmark: the queue at scale. Claim and status-poll latency with 100, 1,000 and 10,000 jobs queued.

    .venv/bin/python bench/queue_scale.py [--depths 100,1000,10000] [--rounds 12] [--slots 16] [--polls 400]

For each depth, a fresh store (a real SQLite file, synchronous=FULL as the server runs it) gets `depth`
queued fake-trainer jobs (tests/fakes/fake_jobs.fake_request, each with its full request JSON), plus as many
finished ones as a server that has run for a while holds. Then `--rounds` times: 16 simulated slots claim
a job each (`Store.claim_next_job`, the scheduler's statement; one is a GPU slot, so the processor-type filter
is exercised), each claimed job is settled Succeeded as a fake trainer's would be, and 16 new jobs are
submitted so the depth stays where it is. Between rounds, `--polls` status polls read random jobs the way
the job resource does (`Store.get_job`, the first read after a write goes to SQLite) and straight from SQLite
(the SELECT behind it, no cache). Printed: p50/p99 per depth, and 10,000 / 100 ratios (goal: flat, <= 2).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpjobs.domain import Job, JobStatus, new_job_id  # noqa: E402
from gpjobs.store import Store, sql  # noqa: E402
from tests.fakes.fake_jobs import fake_request  # noqa: E402

S = JobStatus


def _job(i: int) -> Job:
    request = fake_request(name=f"m{i}")
    return Job(
        job_id=new_job_id(),
        owner=f"user{i % 50}",
        status=S.SUBMITTED,
        model_type="FEATURE_CLASSIFIER",
        inputs={"output_name": f'{{"name": "m{i}"}}'},
        spec=request.to_json_dict(),
        max_attempts=3,
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _fill(store: Store, count: int, finished: int) -> list[str]:
    ids = []
    for i in range(count + finished):
        job = await store.create_job(_job(i))
        ids.append(job.job_id)
    for job_id in ids[:finished]:  # history: what a server that ran a while keeps
        await store.transition(job_id, S.EXECUTING, boot_id="b", device="cpu")
        await store.transition(job_id, S.SUCCEEDED, result={"out_item": {"id": "x"}})
    return ids


async def run_depth(depth: int, rounds: int, slots: int, polls: int, root: Path) -> dict[str, list[float]]:
    path = root / f"q{depth}.sqlite3"
    fill = await Store.open(path, synchronous="OFF")  # filling only; the measured store below runs FULL
    ids = await _fill(fill, depth, finished=depth)
    await fill.close()
    store = await Store.open(path, synchronous="FULL")
    devices = ["cuda:0"] + ["cpu"] * (slots - 1)
    out: dict[str, list[float]] = {"claim": [], "poll": [], "poll_sql": []}
    serial = depth * 2
    try:
        for _ in range(rounds):
            claimed = []
            for device in devices:
                start = time.perf_counter()
                job = await store.claim_next_job(device, "bench")
                out["claim"].append(time.perf_counter() - start)
                assert job is not None, "the queue ran dry"
                claimed.append(job.job_id)
            for job_id in claimed:  # the fake trainer's outcome, and the next submissions
                await store.transition(job_id, S.SUCCEEDED, result={"out_item": {"id": job_id}})
                ids.append((await store.create_job(_job(serial))).job_id)
                serial += 1
            for job_id in random.sample(ids, min(polls, len(ids))):
                start = time.perf_counter()
                await store.get_job(job_id)
                out["poll"].append(time.perf_counter() - start)
                start = time.perf_counter()
                await store.db.fetchone(sql.SELECT_JOB, {"job_id": job_id})
                out["poll_sql"].append(time.perf_counter() - start)
        queued = await store.db.fetchone(
            "SELECT count(*) FROM jobs WHERE status IN (?, ?)", (S.SUBMITTED.value, S.WAITING.value)
        )
        assert abs(queued[0] - depth) <= slots, queued[0]
    finally:
        await store.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--polls", type=int, default=400)
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    random.seed(0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpjobs-queue-") as tmp:
        for depth in depths:
            started = time.perf_counter()
            results[depth] = await run_depth(depth, args.rounds, args.slots, args.polls, Path(tmp))
            print(f"  depth {depth}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(f"queue at scale: {args.slots} slots, {args.rounds} rounds; milliseconds (p50 / p99)")
    print(f"{'queued':>8}  {'claim':>17}  {'poll (get_job)':>17}  {'poll (SQL)':>17}")
    for depth in depths:
        row = results[depth]
        cells = [
            f"{_pct(row[k], 0.5) * 1e3:7.3f} / {_pct(row[k], 0.99) * 1e3:7.3f}" for k in ("claim", "poll", "poll_sql")
        ]
        print(f"{depth:>8}  " + "  ".join(cells))
    first, last = depths[0], depths[-1]
    for key in ("claim", "poll", "poll_sql"):
        p50 = statistics.median(results[last][key]) / statistics.median(results[first][key])
        p99 = _pct(results[last][key], 0.99) / _pct(results[first][key], 0.99)
        print(f"{key}: {last} / {first} queued: p50 x{p50:.2f}, p99 x{p99:.2f} (goal: flat, <= 2)")


if __name__ == "__main__":
    asyncio.run(main())
