"""API tokens: random secrets shown once, stored as SHA-256, with a user/admin role and optional expiry."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from gpjobs.domain import ROLES, Principal, now_ms
from gpjobs.store import sql
from gpjobs.store.db import Database

TOKEN_PREFIX = "gpj_"


MAX_TOKEN_CHARS = 512  # ours are 47; anything much longer is not a token of this server


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def could_be_token(token: str) -> bool:
    """Tokens are printable ASCII; a header with other bytes (aiohttp hands them over as surrogates)
    or a huge value is simply not a token: 498, never an encoding error."""
    return 0 < len(token) <= MAX_TOKEN_CHARS and token.isascii() and token.isprintable()


class TokensMixin:
    db: Database

    async def create_token(self, username: str, role: str = "user", ttl_s: float | None = None) -> str:
        """Create a token for `username`; the plaintext is returned once and never stored."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {sorted(ROLES)}, not {role!r}")
        if not username or not username.strip() or len(username) > 128:
            raise ValueError("username must be 1-128 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = now_ms()
        expires = None if not ttl_s else now + int(ttl_s * 1000)
        async with self.db.write() as conn:
            await conn.execute(
                sql.INSERT_TOKEN,
                {
                    "token_hash": hash_token(token),
                    "username": username.strip(),
                    "role": role,
                    "created_ms": now,
                    "expires_ms": expires,
                },
            )
        return token

    async def authenticate(self, token: str | None) -> Principal | None:
        """The principal a token stands for, or None (unknown, expired or revoked)."""
        if not token or not could_be_token(token):
            return None
        # The lookup is by hash, so the comparison never touches the secret itself (no timing oracle).
        row = await self.db.fetchone(sql.SELECT_TOKEN, {"token_hash": hash_token(token)})
        if row is None or row["revoked_ms"] is not None:
            return None
        if row["expires_ms"] is not None and row["expires_ms"] <= now_ms():
            return None
        return Principal(row["username"], row["role"])

    async def revoke_tokens(self, username: str) -> int:
        async with self.db.write() as conn:
            cur = await conn.execute(sql.REVOKE_TOKENS, {"now": now_ms(), "username": username})
            return cur.rowcount

    async def users(self) -> list[dict[str, Any]]:
        """Users that hold tokens: username, role (the highest of their live tokens), live token count."""
        rows = await self.db.fetchall(sql.LIVE_USERS, {"now": now_ms()})
        return [{"username": r["username"], "role": "admin" if r["admin"] else "user", "tokens": r["n"]} for r in rows]
