"""Principals and personal access tokens in the store.

A token is ``osp_`` + 32 random bytes (URL-safe base64). Only its SHA-256 is stored: a token has
enough entropy that a slow hash would add nothing but latency to every request. It is shown once,
when it is made.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import orjson
from sqlalchemy import Connection, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from opensupervisor.identity import Principal
from opensupervisor.identity.principal import Kind
from opensupervisor.store.schema import grants, group_members, principals, tokens, user_credentials
from opensupervisor.store.store import Store, now_ms

TOKEN_PREFIX = "osp_"


class Conflict(ValueError):
    """A name that is taken, or a reference to one that does not exist."""


@dataclass(frozen=True, slots=True)
class PrincipalRow:
    id: str
    name: str
    kind: Kind
    is_admin: bool
    created_at: int
    groups: tuple[str, ...] = ()

    def public(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "admin": self.is_admin,
                "created_at": self.created_at // 1000, "groups": list(self.groups)}


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: str
    principal: str
    comment: str | None
    created_at: int
    expires_at: int | None
    revoked_at: int | None

    def public(self) -> dict[str, object]:
        return {"id": self.id, "principal": self.principal, "comment": self.comment,
                "created_at": self.created_at // 1000,
                "expires_at": None if self.expires_at is None else self.expires_at // 1000,
                "revoked": self.revoked_at is not None}


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """What a presented token turned out to be."""

    principal: Principal | None
    problem: str | None  # "expired", "revoked", or None when valid (or unknown: principal None)


def _leave_grants(conn: Connection, name: str) -> None:
    """Take ``name`` out of every stored grant (an emptied one stays: its object is for admins only)."""
    for row in conn.execute(select(grants.c.object, grants.c.principals)).all():
        names = orjson.loads(row.principals)
        if name in names:
            conn.execute(update(grants).where(grants.c.object == row.object).values(
                principals=orjson.dumps([n for n in names if n != name]).decode(), updated_at=now_ms()))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Principals:
    # A token's check is reused this long: revoking one takes effect at once in the process that
    # revoked it, and within this time everywhere else.
    cache_s = 5.0
    cache_size = 10_000

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, TokenCheck]] = {}

    async def cached_check(self, token: str) -> TokenCheck:
        key = token_hash(token)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        check = await self.check(token)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + self.cache_s, check)
        return check

    async def create(self, name: str, kind: Kind, is_admin: bool = False) -> PrincipalRow:
        principal_id, created = "p_" + secrets.token_hex(12), now_ms()
        row = {"id": principal_id, "name": name, "kind": kind, "is_admin": is_admin, "created_at": created}

        def write() -> None:
            try:
                with self.store.transaction() as conn:
                    conn.execute(insert(principals), [row])
            except IntegrityError as exc:
                raise Conflict(f"a principal named '{name}' exists already") from exc

        await self.store.write(write)
        return PrincipalRow(principal_id, name, kind, is_admin, created)

    async def all(self) -> list[PrincipalRow]:
        def read() -> list[PrincipalRow]:
            with self.store.engine.connect() as conn:
                rows = conn.execute(select(principals).order_by(principals.c.name)).all()
                names = {r.id: r.name for r in rows}
                memberships: dict[str, list[str]] = {}
                for m in conn.execute(select(group_members)):
                    memberships.setdefault(m.member_id, []).append(names.get(m.group_id, m.group_id))
            return [PrincipalRow(r.id, r.name, r.kind, bool(r.is_admin), int(r.created_at),
                                 tuple(sorted(memberships.get(r.id, [])))) for r in rows]

        return await self.store.run(read)

    async def by_name(self, name: str) -> PrincipalRow | None:
        return next((p for p in await self.all() if p.name == name), None)

    async def remove(self, name: str) -> bool:
        """Remove a principal with its memberships, tokens and stored credentials, and take it out of
        the stored grants, which name principals: a later principal of the same name gets none of
        them. Its responses stay, owned by its id."""
        def write() -> bool:
            with self.store.transaction() as conn:
                found = conn.execute(select(principals.c.id).where(principals.c.name == name)).scalar()
                if found is None:
                    return False
                conn.execute(delete(tokens).where(tokens.c.principal_id == found))
                conn.execute(delete(group_members).where((group_members.c.member_id == found)
                                                         | (group_members.c.group_id == found)))
                conn.execute(delete(user_credentials).where(user_credentials.c.principal_id == found))
                _leave_grants(conn, name)
                conn.execute(delete(principals).where(principals.c.id == found))
                return True

        removed = await self.store.write(write)
        self._cache.clear()
        return removed

    async def set_member(self, group: str, member: str, present: bool) -> None:
        def write() -> None:
            with self.store.transaction() as conn:
                ids = dict(conn.execute(select(principals.c.name, principals.c.id)
                                        .where(principals.c.name.in_([group, member]))).tuples().all())
                kinds = dict(conn.execute(select(principals.c.name, principals.c.kind)
                                          .where(principals.c.name.in_([group, member]))).tuples().all())
                if kinds.get(group) != "group":
                    raise Conflict(f"'{group}' is not a group")
                if member not in ids or kinds.get(member) == "group":
                    raise Conflict(f"'{member}' is not a user or service principal")
                where = and_(group_members.c.group_id == ids[group], group_members.c.member_id == ids[member])
                conn.execute(delete(group_members).where(where))
                if present:
                    conn.execute(insert(group_members), [{"group_id": ids[group], "member_id": ids[member]}])

        await self.store.write(write)

    async def issue_token(self, name: str, *, lifetime_s: int | None, comment: str | None) -> tuple[str, TokenRow]:
        """A new token for ``name``: the token itself (shown once) and its record."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        created = now_ms()
        expires = None if lifetime_s is None else created + lifetime_s * 1000

        def write() -> TokenRow:
            with self.store.transaction() as conn:
                row = conn.execute(select(principals).where(principals.c.name == name)).first()
                if row is None:
                    raise Conflict(f"there is no principal named '{name}'")
                if row.kind == "group":
                    raise Conflict("groups have no tokens; give their members tokens")
                record = TokenRow("tok_" + secrets.token_hex(8), name, comment, created, expires, None)
                conn.execute(insert(tokens), [{"id": record.id, "principal_id": row.id,
                                               "token_hash": token_hash(token), "comment": comment,
                                               "created_at": created, "expires_at": expires}])
                return record

        return token, await self.store.write(write)

    async def tokens(self, name: str | None = None) -> list[TokenRow]:
        query = select(tokens, principals.c.name).join(principals, principals.c.id == tokens.c.principal_id)
        if name is not None:
            query = query.where(principals.c.name == name)

        def read() -> list[TokenRow]:
            with self.store.engine.connect() as conn:
                return [TokenRow(r.id, r.name, r.comment, int(r.created_at), r.expires_at, r.revoked_at)
                        for r in conn.execute(query.order_by(tokens.c.created_at))]

        return await self.store.run(read)

    async def revoke(self, token_id: str) -> bool:
        def write() -> bool:
            with self.store.transaction() as conn:
                done = conn.execute(update(tokens).where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
                                    .values(revoked_at=now_ms()))
                return bool(done.rowcount)

        revoked = await self.store.write(write)
        self._cache.clear()
        return revoked

    async def check(self, token: str) -> TokenCheck:
        """The principal a token stands for, or why it does not count."""
        digest = token_hash(token)

        def read() -> TokenCheck:
            with self.store.engine.connect() as conn:
                row = conn.execute(select(tokens, principals.c.name, principals.c.kind, principals.c.is_admin)
                                   .join(principals, principals.c.id == tokens.c.principal_id)
                                   .where(tokens.c.token_hash == digest)).first()
                if row is None:
                    return TokenCheck(None, None)
                if row.revoked_at is not None:
                    return TokenCheck(None, "been revoked")
                if row.expires_at is not None and row.expires_at <= now_ms():
                    return TokenCheck(None, "expired")
                groups = conn.execute(select(principals.c.name).join(
                    group_members, group_members.c.group_id == principals.c.id).where(
                    group_members.c.member_id == row.principal_id)).scalars().all()
            kind: Literal["user", "service_principal"] = \
                "service_principal" if row.kind == "service_principal" else "user"
            return TokenCheck(Principal(id=row.principal_id, name=row.name, kind=kind, is_admin=bool(row.is_admin),
                                        groups=frozenset(groups)), None)

        return await self.store.run(read)
