"""Published items (portal-like records of .dlpk files) and the publish transaction."""

from __future__ import annotations

import sqlite3
from typing import Any, Sequence

from gpjobs.domain import ACTIVE_STATUSES, Item, ItemExists, ITEM_TYPE_DLPK, Job, JobStatus, MessageType, now_ms
from gpjobs.store.db import Database, dumps, loads
from gpjobs.store.jobs import MessageInput, append_messages, job_from_row

_ITEM_COLUMNS = ("id", "owner", "title", "name", "type", "type_keywords", "tags", "folder_id", "size",
                 "created_ms", "modified_ms", "path", "job_id", "description", "snippet", "properties")
_JSON = ("type_keywords", "tags", "properties")
_UPDATABLE = frozenset({"title", "description", "snippet", "tags", "type_keywords", "properties", "folder_id"})


def item_from_row(row: sqlite3.Row) -> Item:
    data = {k: row[k] for k in row.keys()}
    for key in _JSON:
        data[key] = loads(data[key])
    return Item(**data)


def _item_values(item: Item) -> dict[str, Any]:
    values = {c: getattr(item, c) for c in _ITEM_COLUMNS}
    for key in _JSON:
        values[key] = dumps(values[key])
    return values


class ItemsMixin:
    db: Database

    async def get_item(self, item_id: str) -> Item | None:
        row = await self.db.fetchone("SELECT * FROM items WHERE id = ?", (item_id,))
        return item_from_row(row) if row else None

    async def find_item(self, owner: str, title: str, item_type: str = ITEM_TYPE_DLPK) -> Item | None:
        """The owner's item with this title (model name), if any."""
        row = await self.db.fetchone("SELECT * FROM items WHERE owner = ? AND type = ? AND title = ?",
                                     (owner, item_type, title))
        return item_from_row(row) if row else None

    async def item_for_job(self, job_id: str) -> Item | None:
        row = await self.db.fetchone("SELECT * FROM items WHERE job_id = ?", (job_id,))
        return item_from_row(row) if row else None

    async def list_items(self, owner: str | None = None) -> list[Item]:
        if owner is None:
            rows = await self.db.fetchall("SELECT * FROM items ORDER BY created_ms DESC")
        else:
            rows = await self.db.fetchall("SELECT * FROM items WHERE owner = ? ORDER BY created_ms DESC", (owner,))
        return [item_from_row(r) for r in rows]

    async def update_item(self, item_id: str, **fields: Any) -> Item | None:
        """Update descriptive fields (title, description, snippet, tags, typeKeywords, folder_id);
        `properties` is merged into the stored dict, as the portal's item.update does."""
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"cannot update item field(s) {sorted(bad)}")
        async with self.db.write() as conn:
            row = await (await conn.execute("SELECT * FROM items WHERE id = ?", (item_id,))).fetchone()
            if row is None:
                return None
            item = item_from_row(row)
            if "properties" in fields:
                fields["properties"] = {**item.properties, **(fields["properties"] or {})}
            item = item.replace(**fields, modified_ms=now_ms())
            values = _item_values(item)
            keys = [k for k in (*fields, "modified_ms")]
            await conn.execute(f"UPDATE items SET {', '.join(f'{k} = ?' for k in keys)} WHERE id = ?",
                               (*[values[k] for k in keys], item_id))
        return item

    async def delete_item(self, item_id: str) -> Item | None:
        async with self.db.write() as conn:
            row = await (await conn.execute("DELETE FROM items WHERE id = ? RETURNING *", (item_id,))).fetchone()
        return item_from_row(row) if row else None

    async def publish_job(self, job_id: str, *, result: dict[str, Any], item: Item | None = None,
                          overwrite: bool = False, messages: Sequence[MessageInput] = ()
                          ) -> tuple[Job, Item | None, Item | None]:
        """Insert (or overwrite) the item and mark the job Succeeded with `result`, in ONE transaction.

        Idempotent: publishing a job that already succeeded returns it unchanged. Returns
        (job, item, replaced) where `replaced` is the previous item whose file the caller may now delete.
        Raises ItemExists when the owner already has an item of that name and `overwrite` is false.
        """
        now = now_ms()
        async with self.db.write() as conn:
            row = await (await conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,))).fetchone()
            if row is None:
                raise LookupError(f"job {job_id} does not exist")
            job = job_from_row(row)
            if job.status is JobStatus.SUCCEEDED:
                existing = await (await conn.execute("SELECT * FROM items WHERE job_id = ?", (job_id,))).fetchone()
                return job, item_from_row(existing) if existing else None, None
            replaced = None
            if item is not None:
                clash = await (await conn.execute("SELECT * FROM items WHERE owner = ? AND type = ? AND name = ?",
                                                  (item.owner, item.type, item.name))).fetchone()
                if clash is not None:
                    if not overwrite:
                        raise ItemExists(
                            f"an item named {item.name!r} already exists for user {item.owner!r}; choose another "
                            "output_name or submit with overwrite_model=true")
                    replaced = item_from_row(clash)
                    # Keep the id (clients hold it) and the creation time; point at the new file.
                    item = item.replace(id=replaced.id, created_ms=replaced.created_ms, modified_ms=now,
                                        properties={**replaced.properties, **item.properties})
                    values = _item_values(item)
                    keys = [k for k in _ITEM_COLUMNS if k not in ("id", "created_ms")]
                    await conn.execute(f"UPDATE items SET {', '.join(f'{k} = ?' for k in keys)} WHERE id = ?",
                                       (*[values[k] for k in keys], item.id))
                    result = {"id": item.id}
                else:
                    item = item.replace(created_ms=item.created_ms or now, modified_ms=now)
                    values = _item_values(item)
                    await conn.execute(f"INSERT INTO items ({','.join(values)}) VALUES ({','.join('?' * len(values))})",
                                       tuple(values.values()))
            active = [s.value for s in ACTIVE_STATUSES]
            cur = await conn.execute(
                "UPDATE jobs SET status = 'esriJobSucceeded', result = ?, progress = 100.0, finished_ms = ?, "
                f"updated_ms = ?, error = NULL WHERE job_id = ? AND status IN ({','.join('?' * len(active))}) "
                "RETURNING *", (dumps(result), now, now, job_id, *active))
            updated = await cur.fetchone()
            if updated is None:
                from gpjobs.domain import InvalidTransition

                raise InvalidTransition(job_id, job.status, JobStatus.SUCCEEDED)
            await append_messages(conn, job_id, [*messages, (MessageType.INFORMATIVE,
                                                             f"Succeeded at {_esri_time(now)}")], now)
            return job_from_row(updated), item, replaced


def _esri_time(ms: int) -> str:
    """Esri's 'Succeeded at <time>' format, e.g. 'Wednesday, June 5, 2024 10:01:02 AM' (local time)."""
    import time

    t = time.localtime(ms / 1000)
    return time.strftime("%A, %B ", t) + f"{t.tm_mday}, {t.tm_year} " + time.strftime("%I:%M:%S %p", t).lstrip("0")
