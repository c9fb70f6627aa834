"""Who may use what (grants) and how much (rate limits), as stored beside the workspace file's."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from opensupervisor.admin.common import log, parse
from opensupervisor.errors import InvalidRequest, NotFound
from opensupervisor.identity.grants import Access, check_object
from opensupervisor.identity.limits import RateLimit, RateLimiter, check_limits
from opensupervisor.knowledge.local_embedder import BUNDLED
from opensupervisor.store.grants import StoredGrants
from opensupervisor.store.principals import Principals
from opensupervisor.store.rate_limits import StoredRateLimits


class GrantBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    principals: list[str]


class GrantAdmin:
    """Grants stored through the admin API or the CLI; the workspace file's are changed in the file."""

    def __init__(self, access: Access, stored: StoredGrants, principals: Principals) -> None:
        self.access = access
        self.stored = stored
        self.principals = principals

    def listing(self) -> dict[str, Any]:
        return {"default": self.access.default, "data": self.access.listing()}

    async def put(self, obj: str, fields: Mapping[str, object]) -> dict[str, object]:
        """Who may use ``obj`` (the list replaces the one before); the grant as it is now."""
        self._check(obj)
        names = parse(GrantBody, fields).principals
        known = {p.name for p in await self.principals.all()}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InvalidRequest(f"No principal named {', '.join(repr(n) for n in unknown)}.", param="principals",
                                 code="invalid_value")
        await self.stored.put(obj, names)
        await self.reload()
        log.info("grants on %s set to %s", obj, ", ".join(sorted(set(names))) or "nobody but admins")
        return next(g for g in self.access.listing() if g["object"] == obj)

    async def remove(self, obj: str) -> None:
        self._check(obj)
        if not await self.stored.remove(obj):
            raise NotFound(f"There are no grants on '{obj}'.", param="object")
        await self.reload()
        log.info("grants on %s removed", obj)

    async def reload(self) -> None:
        self.access.load(await self.stored.all())

    def _check(self, obj: str) -> None:
        try:
            check_object(obj)
        except ValueError as exc:
            text = str(exc)
            raise InvalidRequest(text[:1].upper() + text[1:] + ".", param="object", code="invalid_value") from exc
        if obj in self.access.declared:
            raise InvalidRequest(f"The grants on '{obj}' are declared in the workspace file; change them there.",
                                 param="object", code="invalid_value")


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate_limits: list[RateLimit] = Field(default_factory=list)

    @field_validator("rate_limits")
    @classmethod
    def _bounds(cls, limits: list[RateLimit]) -> list[RateLimit]:
        return check_limits(limits)


class GatewayBody(LimitsBody):
    """The AI Gateway's configuration of an endpoint: ``rate_limits`` apply, the rest is kept as sent."""

    model_config = ConfigDict(extra="allow")


class LimitAdmin:
    """Rate limits set at run time; they replace the workspace file's for their model."""

    def __init__(self, limiter: RateLimiter, stored: StoredRateLimits, models: Collection[str]) -> None:
        self.limiter = limiter
        self.stored = stored
        self.models = models

    def listing(self) -> list[dict[str, object]]:
        return [{"model": model, **entry} for model, entry in self.limiter.listing().items()]

    async def put(self, model: str, fields: Mapping[str, object]) -> dict[str, object]:
        """Replace ``model``'s limits; its limits as they are now."""
        self._check(model)
        await self._store(model, parse(LimitsBody, fields).rate_limits)
        return {"model": model, **self.limiter.listing()[model]}

    async def put_gateway(self, model: str, fields: Mapping[str, object]) -> dict[str, object]:
        """The gateway's own call: its ``rate_limits`` replace ``model``'s; the configuration as sent."""
        self._check(model)
        body = parse(GatewayBody, fields)
        await self._store(model, body.rate_limits)
        return body.model_dump(exclude_none=True)

    async def remove(self, model: str) -> None:
        """Back to the workspace file's limits."""
        self._check(model)
        if not await self.stored.remove(model):
            raise NotFound(f"No rate limits were set on '{model}' at run time.", param="model")
        await self.reload()
        log.info("rate limits of %s removed (the workspace file's apply)", model)

    async def reload(self) -> None:
        self.limiter.load(await self.stored.all())

    async def _store(self, model: str, limits: list[RateLimit]) -> None:
        await self.stored.put(model, limits)
        await self.reload()
        log.info("rate limits of %s set (%d)", model, len(limits))

    def _check(self, model: str) -> None:
        if model not in self.models and model != BUNDLED:  # the embedding model is limited like any
            raise NotFound(f"The model '{model}' does not exist.", param="model", code="model_not_found")
