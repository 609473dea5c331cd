"""Publishing items (one transaction, idempotent, overwrite rules) and hashed tokens."""

from __future__ import annotations

import sqlite3

import pytest

from gpjobs.domain import InvalidTransition, Item, ItemExists, JobStatus, new_item_id
from gpjobs.store.tokens import hash_token


async def running_job(store, make_job, owner="alice"):
    await store.create_job(make_job(owner))
    return await store.claim_next_job("cpu", "boot")


def dlpk_item(owner, title, job_id, path="/content/x.dlpk"):
    return Item(id=new_item_id(), owner=owner, title=title, name=f"{title}.dlpk", path=path, job_id=job_id, size=3)


async def test_publish_inserts_item_and_succeeds_once(store, make_job):
    job = await running_job(store, make_job)
    item = dlpk_item("alice", "model", job.job_id)
    done, published, replaced = await store.publish_job(job.job_id, result={"id": item.id}, item=item)
    assert done.status is JobStatus.SUCCEEDED and done.result == {"id": item.id} and done.progress == 100
    assert replaced is None and (await store.get_item(item.id)).path == "/content/x.dlpk"
    assert (await store.find_item("alice", "model")).id == item.id
    assert (await store.get_messages(job.job_id))[-1].description.startswith("Succeeded at ")
    # Repeating the publish (a retry after a crash between copy and commit) changes nothing.
    again, same, _ = await store.publish_job(
        job.job_id, result={"id": "other"}, item=dlpk_item("alice", "model", job.job_id)
    )
    assert again.result == {"id": item.id} and same.id == item.id
    assert len(await store.list_items("alice")) == 1
    assert len([m for m in await store.get_messages(job.job_id) if m.description.startswith("Succeeded")]) == 1


async def test_name_clash_without_overwrite_is_an_error_and_changes_nothing(store, make_job):
    first = await running_job(store, make_job)
    item = dlpk_item("alice", "model", first.job_id)
    await store.publish_job(first.job_id, result={"id": item.id}, item=item)
    second = await running_job(store, make_job)
    with pytest.raises(ItemExists, match="overwrite_model"):
        await store.publish_job(second.job_id, result={"id": "x"}, item=dlpk_item("alice", "model", second.job_id))
    assert (await store.get_job(second.job_id)).status is JobStatus.EXECUTING
    # Another owner may use the same name.
    other = await running_job(store, make_job, owner="bob")
    await store.publish_job(other.job_id, result={"id": "y"}, item=dlpk_item("bob", "model", other.job_id))


async def test_overwrite_keeps_item_id_and_points_at_new_file(store, make_job):
    first = await running_job(store, make_job)
    old = dlpk_item("alice", "model", first.job_id, path="/content/a.dlpk")
    await store.publish_job(first.job_id, result={"id": old.id}, item=old)
    await store.update_item(old.id, properties={"jobStatus": "completed"})
    second = await running_job(store, make_job)
    new = dlpk_item("alice", "model", second.job_id, path="/content/b.dlpk")
    done, item, replaced = await store.publish_job(second.job_id, result={"id": new.id}, item=new, overwrite=True)
    assert item.id == old.id and done.result == {"id": old.id}
    assert replaced.path == "/content/a.dlpk"
    stored = await store.get_item(old.id)
    assert stored.path == "/content/b.dlpk" and stored.job_id == second.job_id
    assert stored.properties == {"jobStatus": "completed"}
    assert len(await store.list_items()) == 1


async def test_publish_refuses_a_job_that_is_not_running(store, make_job):
    job = await store.create_job(make_job())
    item = dlpk_item("alice", "m", job.job_id)
    with pytest.raises(InvalidTransition):
        await store.publish_job(job.job_id, result={"id": item.id}, item=item)
    assert await store.get_item(item.id) is None  # the item insert rolled back with it


async def test_file_share_publish_has_no_item(store, make_job):
    job = await running_job(store, make_job)
    done, item, _ = await store.publish_job(job.job_id, result={"uri": "/fileShares/default/out/m.dlpk"})
    assert done.result == {"uri": "/fileShares/default/out/m.dlpk"} and item is None


async def test_update_item_merges_properties_and_rejects_unknown_fields(store, make_job):
    job = await running_job(store, make_job)
    item = dlpk_item("alice", "m", job.job_id)
    await store.publish_job(job.job_id, result={"id": item.id}, item=item)
    await store.update_item(item.id, properties={"a": 1}, snippet="s", tags=["x"])
    updated = await store.update_item(item.id, properties={"b": 2}, description="d")
    assert updated.properties == {"a": 1, "b": 2} and (await store.get_item(item.id)).snippet == "s"
    assert (await store.get_item(item.id)).tags == ["x"]
    with pytest.raises(ValueError):
        await store.update_item(item.id, path="/etc/passwd")
    assert await store.update_item("0" * 32, title="t") is None
    assert (await store.delete_item(item.id)).id == item.id and await store.get_item(item.id) is None


async def test_tokens_are_hashed_and_authenticate(store):
    token = await store.create_token("alice", "user")
    admin = await store.create_token("root", "admin")
    principal = await store.authenticate(token)
    assert (principal.username, principal.role) == ("alice", "user")
    assert (await store.authenticate(admin)).is_admin
    assert await store.authenticate("gpj_wrong") is None and await store.authenticate("") is None
    raw = sqlite3.connect(store.path).execute("SELECT token_hash FROM tokens").fetchall()
    assert token not in str(raw) and (hash_token(token),) in raw
    assert {u["username"] for u in await store.users()} == {"alice", "root"}
    assert await store.revoke_tokens("alice") == 1 and await store.authenticate(token) is None
    with pytest.raises(ValueError):
        await store.create_token("x", "superuser")


async def test_expired_token_is_refused(store):
    token = await store.create_token("alice", ttl_s=0.001)
    import asyncio

    await asyncio.sleep(0.01)
    assert await store.authenticate(token) is None
