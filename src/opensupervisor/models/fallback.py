"""Fallbacks: when a model fails with a retryable error before it produced anything, try the next one.

Once a model has streamed output the run is committed to it; switching midway would mix two answers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace

from opensupervisor.core.contracts import Model, ModelEvent, ModelRequest, Served, WrapperModel
from opensupervisor.errors import ModelError

log = logging.getLogger(__name__)


class FallbackModel(WrapperModel):
    """The primary model as far as anyone can tell; its fallbacks answer only when it cannot."""

    def __init__(self, primary: Model, fallbacks: list[Model]) -> None:
        super().__init__(primary)
        self.chain = [primary, *fallbacks]

    async def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        for position, model in enumerate(self.chain):
            produced = False
            try:
                async with aclosing(model.request_stream(_within(request, model))) as stream:
                    async for event in stream:
                        if not produced and position > 0:
                            yield Served(model.name)
                        produced = True
                        yield event
                return
            except ModelError as exc:
                if produced or not exc.retryable or position == len(self.chain) - 1:
                    raise
                log.warning("model %s failed (%s); falling back to %s", model.name, exc.code,
                            self.chain[position + 1].name)


def _within(request: ModelRequest, model: Model) -> ModelRequest:
    """The request as ``model`` may take it: no more output tokens than its own cap."""
    cap = model.max_output_tokens
    if cap is None or (request.max_output_tokens is not None and request.max_output_tokens <= cap):
        return request
    return replace(request, max_output_tokens=cap)
