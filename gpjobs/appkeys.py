"""Typed aiohttp application keys, in a module of their own so that web/ and app.py can share them
without importing each other."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gpjobs.config import Config

if TYPE_CHECKING:  # the store and scheduler import aiosqlite/asyncio machinery; keep this module light
    from gpjobs.scheduler import Scheduler
    from gpjobs.store import Store

CONFIG_KEY: web.AppKey[Config] = web.AppKey("gpjobs_config", Config)
STORE_KEY: web.AppKey[Store] = web.AppKey("gpjobs_store")
SCHEDULER_KEY: web.AppKey[Scheduler] = web.AppKey("gpjobs_scheduler")
BOOT_ID_KEY: web.AppKey[str] = web.AppKey("gpjobs_boot_id", str)
