"""Status polls at scale: a poll's size is flat in the job's length (recent messages + counts, the full list
paged on returnMessages=true), and an unchanged job is answered from memory, without a SQLite round trip."""

from __future__ import annotations

import asyncio

from gpjobs.domain import MessageType
from gpjobs.web.gp_jobs import MESSAGE_PAGE_MAX, RECENT_MESSAGES
from tests.unit.web.conftest import TASK, Server

INFO = MessageType.INFORMATIVE


async def long_job(server: Server, epochs: int) -> str:
    """A running job with `epochs` epoch lines after Submitted. and Executing..."""
    job_id = (await server.submit())["jobId"]
    await server.store.claim_next_job("cpu", "boot-1")
    lines = [
        (INFO, f"Epoch {e}/{epochs}, train_loss {1 / e:.4f}, valid_loss {1.1 / e:.4f}") for e in range(1, epochs + 1)
    ]
    for start in range(0, len(lines), 500):
        await server.store.record_progress(job_id, messages=lines[start : start + 500], progress=50.0)
    return job_id


async def test_a_plain_poll_carries_the_recent_messages_and_the_count(server: Server) -> None:
    job_id = await long_job(server, 2000)
    total = 2000 + 2
    resp = await server.client.get(f"{TASK}/jobs/{job_id}", params={"f": "json"})
    body = await resp.json()
    assert body["jobStatus"] == "esriJobExecuting" and body["messageCount"] == total
    assert len(body["messages"]) == RECENT_MESSAGES and body["messageStart"] == total - RECENT_MESSAGES + 1
    assert body["messages"][-1]["description"].startswith("Epoch 2000/2000")
    assert body["progress"]["message"].startswith("Epoch 2000/2000")
    short_id = (await server.submit())["jobId"]
    short = await server.json("GET", f"{TASK}/jobs/{short_id}", params={"f": "json"})
    assert short["messageCount"] == 1 and short["messageStart"] == 1
    # the size of a poll does not grow with the job: 2,000 epochs cost what ~100 do
    assert len(await resp.read()) < 120 * 100


async def test_return_messages_true_pages_through_every_message(server: Server) -> None:
    job_id = await long_job(server, 1500)
    seen: list[str] = []
    start = 1
    while start != -1:
        body = await server.json(
            "GET", f"{TASK}/jobs/{job_id}", params={"f": "json", "returnMessages": "true", "messageStart": str(start)}
        )
        assert body["messageStart"] == start and len(body["messages"]) <= MESSAGE_PAGE_MAX
        seen += [m["description"] for m in body["messages"]]
        start = body["messageNextStart"]
    assert len(seen) == 1502 and seen[:2] == ["Submitted.", "Executing..."] and seen[-1].startswith("Epoch 1500/")
    small = await server.json(
        "GET",
        f"{TASK}/jobs/{job_id}",
        params={"f": "json", "returnMessages": "True", "messageStart": "3", "messageNum": "2"},
    )
    assert [m["description"][:8] for m in small["messages"]] == ["Epoch 1/", "Epoch 2/"] and small[
        "messageNextStart"
    ] == 5


async def test_a_short_job_gets_its_whole_list_on_return_messages_true(server: Server) -> None:
    """arcgis' GPJob.messages sends returnMessages=True and reads `messages`: every message of a normal job."""
    job_id = await long_job(server, 30)
    body = await server.json("GET", f"{TASK}/jobs/{job_id}", params={"f": "json", "returnMessages": "True"})
    assert len(body["messages"]) == 32 and body["messageNextStart"] == -1


async def test_bad_paging_values_get_an_esri_error(server: Server) -> None:
    job_id = (await server.submit())["jobId"]
    for name, value in (
        ("messageStart", "0"),
        ("messageStart", "x"),
        ("messageNum", "1001"),
        ("messageStart", "9" * 40),
        ("messageNum", "-1"),
    ):
        body = await server.json("GET", f"{TASK}/jobs/{job_id}", params={"f": "json", name: value})
        assert body["error"]["code"] == 400 and name in body["error"]["details"][0], (name, value, body)


async def test_an_unchanged_job_is_answered_without_touching_sqlite(server: Server) -> None:
    job_id = await long_job(server, 10)
    url = f"{TASK}/jobs/{job_id}"
    first = await (await server.client.get(url, params={"f": "json"})).read()
    db = server.store.db
    reads = 0
    real_fetchall = db.fetchall

    async def counting_fetchall(*args, **kw):
        nonlocal reads
        reads += 1
        return await real_fetchall(*args, **kw)

    db.fetchall = counting_fetchall
    try:
        bodies = await asyncio.gather(*(server.client.get(url, params={"f": "json"}) for _ in range(20)))
        assert {await r.read() for r in bodies} == {first} and reads == 0
        # A write to another job leaves this one's cached body alone ...
        other = (await server.submit())["jobId"]
        reads = 0
        await server.store.transition(other, "esriJobCancelled")
        assert await (await server.client.get(url, params={"f": "json"})).read() == first and reads == 0
        # ... and a write to it is seen by the next poll, read once however many pollers ask at once.
        await server.store.record_progress(job_id, progress=75.0, messages=[(INFO, "news")])
        bodies = await asyncio.gather(*(server.client.get(url, params={"f": "json"}) for _ in range(20)))
        seen = [await r.json() for r in bodies]
        assert all(b["progress"]["percentage"] == 75 and b["messages"][-1]["description"] == "news" for b in seen)
        assert 1 <= reads <= 4  # job row, count, recent messages: once each, not once per poller
    finally:
        db.fetchall = real_fetchall


async def test_job_json_and_pjson_are_cached_apart(server: Server) -> None:
    job_id = (await server.submit())["jobId"]
    compact = await (await server.client.get(f"{TASK}/jobs/{job_id}", params={"f": "json"})).text()
    pretty = await (await server.client.get(f"{TASK}/jobs/{job_id}", params={"f": "pjson"})).text()
    assert "\n" not in compact and "\n  " in pretty
    none = await server.json("GET", f"{TASK}/jobs/{job_id}", params={"f": "json", "returnMessages": "false"})
    assert "messages" not in none and "messageCount" not in none
