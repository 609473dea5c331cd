"""Published items (portal-like records of .dlpk files) and the publish transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from gpjobs import messages as texts
from gpjobs.domain import ITEM_TYPE_DLPK, Item, ItemExists, ItemNotFound, Job, JobStatus, MessageType, now_ms
from gpjobs.store import sql
from gpjobs.store.db import Database, dumps, loads
from gpjobs.store.jobs import MessageInput, job_from_row, transition_in


def item_from_row(row: sqlite3.Row) -> Item:
    data = {k: row[k] for k in row.keys()}
    for key in sql.ITEM_JSON_COLUMNS:
        data[key] = loads(data[key])
    return Item(**data)


def _item_values(item: Item) -> dict[str, Any]:
    values = {c: getattr(item, c) for c in sql.ITEM_COLUMNS}
    for key in sql.ITEM_JSON_COLUMNS:
        values[key] = dumps(values[key])
    return values


class ItemsMixin:
    db: Database

    async def get_item(self, item_id: str) -> Item | None:
        row = await self.db.fetchone(sql.SELECT_ITEM, {"id": item_id})
        return item_from_row(row) if row else None

    async def find_item(self, owner: str, title: str, item_type: str = ITEM_TYPE_DLPK) -> Item | None:
        """The owner's item with this title (model name), if any."""
        row = await self.db.fetchone(sql.SELECT_ITEM_BY_TITLE, {"owner": owner, "type": item_type, "title": title})
        return item_from_row(row) if row else None

    async def list_items(self, owner: str | None = None) -> list[Item]:
        if owner is None:
            rows = await self.db.fetchall(sql.LIST_ITEMS)
        else:
            rows = await self.db.fetchall(sql.LIST_OWNER_ITEMS, {"owner": owner})
        return [item_from_row(r) for r in rows]

    async def update_item(self, item_id: str, **fields: Any) -> Item | None:
        """Update descriptive fields (title, description, snippet, tags, typeKeywords, folder_id);
        `properties` is merged into the stored dict, as the portal's item.update does."""
        bad = set(fields) - set(sql.ITEM_UPDATABLE)
        if bad:
            raise ValueError(f"cannot update item field(s) {sorted(bad)}")
        async with self.db.write() as conn:
            row = await (await conn.execute(sql.SELECT_ITEM, {"id": item_id})).fetchone()
            if row is None:
                return None
            item = item_from_row(row)
            if "properties" in fields:
                fields["properties"] = {**item.properties, **(fields["properties"] or {})}
            item = item.replace(**fields, modified_ms=now_ms())
            values = _item_values(item)
            await conn.execute(sql.UPDATE_ITEM, {k: values[k] for k in (*sql.ITEM_UPDATABLE, "modified_ms", "id")})
        return item

    async def create_item(self, item: Item) -> Item:
        """Insert an item without a job (a client's empty service item, filled later by an inference job);
        ItemExists when the owner has an item of that type and name."""
        now = now_ms()
        item = item.replace(created_ms=item.created_ms or now, modified_ms=now)
        async with self.db.write() as conn:
            clash = await (
                await conn.execute(sql.SELECT_ITEM_BY_NAME, {"owner": item.owner, "type": item.type, "name": item.name})
            ).fetchone()
            if clash is not None:
                raise ItemExists(texts.output_item_taken(item.name, item.owner))
            await conn.execute(sql.INSERT_ITEM, _item_values(item))
        return item

    async def delete_item(self, item_id: str) -> Item | None:
        async with self.db.write() as conn:
            row = await (await conn.execute(sql.DELETE_ITEM, {"id": item_id})).fetchone()
        return item_from_row(row) if row else None

    async def publish_job(
        self,
        job_id: str,
        *,
        result: dict[str, Any],
        item: Item | None = None,
        overwrite: bool = False,
        messages: Sequence[MessageInput] = (),
        replace_item_id: str | None = None,
    ) -> tuple[Job, Item | None, Item | None]:
        """Insert (or overwrite) the item and mark the job Succeeded with `result`, in ONE transaction.

        Idempotent: publishing a job that already succeeded returns it unchanged. Returns
        (job, item, replaced) where `replaced` is the previous item whose file the caller may now delete.
        Raises ItemExists when the owner already has an item of that name and `overwrite` is false.
        `replace_item_id`: fill that item instead (an inference output naming an item: it keeps its id, creation
        time, folder, description and snippet; ItemNotFound when it is gone, ItemExists when another item has
        the new name).
        """
        now = now_ms()
        async with self.db.write() as conn:
            row = await (await conn.execute(sql.SELECT_JOB, {"job_id": job_id})).fetchone()
            if row is None:
                raise LookupError(f"job {job_id} does not exist")
            job = job_from_row(row)
            if job.status is JobStatus.SUCCEEDED:
                existing = await (await conn.execute(sql.SELECT_ITEM_OF_JOB, {"job_id": job_id})).fetchone()
                return job, item_from_row(existing) if existing else None, None
            replaced = None
            if item is not None and replace_item_id is not None:
                item, replaced = await _fill_item(conn, item, replace_item_id, now)
                result = {"id": item.id}
            elif item is not None:
                clash = await (
                    await conn.execute(
                        sql.SELECT_ITEM_BY_NAME, {"owner": item.owner, "type": item.type, "name": item.name}
                    )
                ).fetchone()
                if clash is not None:
                    if not overwrite:
                        raise ItemExists(texts.item_exists(item.name, item.owner))
                    replaced = item_from_row(clash)
                    # Keep the id (clients hold it) and the creation time; point at the new file.
                    item = item.replace(
                        id=replaced.id,
                        created_ms=replaced.created_ms,
                        modified_ms=now,
                        properties={**replaced.properties, **item.properties},
                    )
                    values = _item_values(item)
                    values.pop("created_ms")
                    await conn.execute(sql.REPLACE_ITEM, values)
                    result = {"id": item.id}
                else:
                    item = item.replace(created_ms=item.created_ms or now, modified_ms=now)
                    await conn.execute(sql.INSERT_ITEM, _item_values(item))
            done = await transition_in(
                conn,
                job_id,
                JobStatus.SUCCEEDED,
                result=result,
                finished_ms=now,
                messages=[*messages, (MessageType.INFORMATIVE, texts.succeeded_at(now))],
            )
            return done, item, replaced


async def _fill_item(conn: Any, item: Item, item_id: str, now: int) -> tuple[Item, Item]:
    """Replace the row of `item_id` with `item` (inside the publish transaction); returns (new, previous)."""
    row = await (await conn.execute(sql.SELECT_ITEM, {"id": item_id})).fetchone()
    if row is None:
        raise ItemNotFound(texts.output_item_gone(item_id))
    previous = item_from_row(row)
    clash = await (
        await conn.execute(sql.SELECT_ITEM_BY_NAME, {"owner": item.owner, "type": item.type, "name": item.name})
    ).fetchone()
    if clash is not None and clash["id"] != item_id:
        raise ItemExists(texts.output_item_taken(item.name, item.owner))
    item = item.replace(
        id=previous.id,
        created_ms=previous.created_ms,
        modified_ms=now,
        folder_id=item.folder_id or previous.folder_id,
        description=previous.description or item.description,
        snippet=previous.snippet or item.snippet,
        tags=list(dict.fromkeys([*previous.tags, *item.tags])),
        properties={**previous.properties, **item.properties},
    )
    values = _item_values(item)
    values.pop("created_ms")
    await conn.execute(sql.REPLACE_ITEM, values)
    return item, previous
