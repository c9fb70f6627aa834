"""Principals (users, service principals, groups), group members, personal access tokens, usage."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from opensupervisor.admin.common import log, parse
from opensupervisor.admin.defaults import DEFAULT_GROUP_BY
from opensupervisor.errors import InvalidRequest, NotFound
from opensupervisor.identity.principal import MAX_TOKEN_LIFETIME_S
from opensupervisor.store.principals import Conflict, PrincipalRow, Principals, TokenRow
from opensupervisor.store.usage import GroupBy, Usage

NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,255}$")
DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")  # ASCII digits only: \d takes any script's
GROUP_BY = ("principal", "model", "day")


class NewPrincipal(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    kind: Literal["user", "service_principal", "group"] = "user"
    admin: bool = False


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    lifetime_seconds: int | None = Field(default=None, ge=1, le=MAX_TOKEN_LIFETIME_S)
    comment: str | None = Field(default=None, max_length=1000)


class Membership(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    member: str


class PrincipalAdmin:
    """``changed`` reloads what this process keeps of the stored grants (a removed principal leaves
    them); None where nothing is kept (the command line: servers reload within seconds)."""

    def __init__(self, principals: Principals, changed: Callable[[], Awaitable[None]] | None = None) -> None:
        self.principals = principals
        self.changed = changed

    async def create(self, fields: Mapping[str, object]) -> PrincipalRow:
        new = parse(NewPrincipal, fields)
        if not NAME.match(new.name) or new.name == "admin":
            raise InvalidRequest("A name may hold letters, digits and . _ @ + - (and may not be 'admin').",
                                 param="name", code="invalid_value")
        if new.admin and new.kind == "group":
            raise InvalidRequest("A group cannot be an admin; make its members admins.", param="admin",
                                 code="invalid_value")
        try:
            row = await self.principals.create(new.name, new.kind, new.admin)
        except Conflict as exc:
            raise InvalidRequest(_sentence(exc), param="name", code="already_exists") from exc
        log.info("%s %s added%s", row.kind, row.name, " (admin)" if row.is_admin else "")
        return row

    async def all(self) -> list[PrincipalRow]:
        return await self.principals.all()

    async def remove(self, name: str) -> None:
        """The principal, its memberships, tokens and stored credentials, and its place in stored grants."""
        if not await self.principals.remove(name):
            raise NotFound(f"Principal '{name}' does not exist.", param="name")
        if self.changed is not None:
            await self.changed()
        log.info("principal %s removed, with its tokens, credentials and grants", name)

    async def set_member(self, group: str, fields: Mapping[str, object], present: bool) -> PrincipalRow:
        """Put the member in ``group`` (``present``) or take them out; the member as it is now."""
        member = parse(Membership, fields).member
        try:
            await self.principals.set_member(group, member, present)
        except Conflict as exc:
            raise InvalidRequest(_sentence(exc), param="member", code="invalid_value") from exc
        log.info("%s %s group %s", member, "joined" if present else "left", group)
        found = await self.principals.by_name(member)
        if found is None:  # removed meanwhile
            raise NotFound(f"Principal '{member}' does not exist.", param="member")
        return found

    async def issue_token(self, name: str, fields: Mapping[str, object]) -> tuple[str, TokenRow]:
        """A new token for ``name``: the token (shown once) and its record."""
        new = parse(NewToken, fields)
        try:
            token, record = await self.principals.issue_token(name, lifetime_s=new.lifetime_seconds,
                                                              comment=new.comment)
        except Conflict as exc:
            raise NotFound(_sentence(exc), param="name") from exc
        log.info("token %s issued for %s", record.id, name)
        return token, record

    async def tokens(self, principal: str | None = None) -> list[TokenRow]:
        return await self.principals.tokens(principal)

    async def revoke(self, token_id: str) -> None:
        """Revoked at once in this process (its cache of checked tokens is emptied), within seconds elsewhere."""
        if not await self.principals.revoke(token_id):
            raise NotFound(f"Token '{token_id}' does not exist or is revoked already.", param="id")
        log.info("token %s revoked", token_id)


async def usage_report(usage: Usage, group_by: str | None = None, *, since: str | None = None,
                       until: str | None = None, principal: str | None = None) -> dict[str, Any]:
    """Usage totals; ``group_by`` any of principal, model, day (comma-separated; empty: one total;
    None: by principal); ``since``/``until`` days (YYYY-MM-DD, inclusive); ``principal`` one caller."""
    keys = [g for g in (DEFAULT_GROUP_BY if group_by is None else group_by).split(",") if g]
    for key in keys:
        if key not in GROUP_BY:
            raise InvalidRequest(f"Cannot group by '{key}' (principal, model, day).", param="group_by",
                                 code="invalid_value")
    for param, day in (("since", since), ("until", until)):
        if day and not DAY.match(day):
            raise InvalidRequest(f"'{param}' is a day: YYYY-MM-DD.", param=param, code="invalid_value")
    await usage.flush()  # this process's rows not yet written count too
    rows = await usage.report(cast("list[GroupBy]", keys), since=since or None, until=until or None,
                              principal=principal or None)
    return {"group_by": keys, "data": rows}


def _sentence(exc: Exception) -> str:
    """A store's complaint ("a principal named 'x' exists already") as an error message."""
    text = str(exc)
    return text[:1].upper() + text[1:] + "."
