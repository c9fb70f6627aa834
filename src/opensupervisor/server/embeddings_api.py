"""``POST /v1/embeddings``: the local embedding model behind OpenAI's embeddings API.

The model knowledge assistants use (``all-MiniLM-L6-v2-int8``), for clients that want the same
vectors: ``input`` is a string or a list of strings; ``encoding_format`` ``float`` or ``base64``.
Like every model, it needs the caller's CAN_QUERY (``model:all-MiniLM-L6-v2-int8``) and counts
against its rate limits and in usage.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import InvalidRequest, NotFound
from opensupervisor.knowledge.local_embedder import BUNDLED, LocalEmbedder
from opensupervisor.runtime import Runtime
from opensupervisor.server.auth import authenticate
from opensupervisor.server.state import JSONResponse
from opensupervisor.wire.request import parse_json_body
from opensupervisor.wire.validation import validated

MAX_INPUTS = 2048


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


async def create_embeddings(request: Request) -> Response:
    state: Runtime = request.app.state.os
    principal = authenticate(request, state.admin_token)
    body = validated(EmbeddingsRequest, parse_json_body(await request.body()))
    if body.model != BUNDLED:
        raise NotFound(f"The model '{body.model}' does not exist (embedding models: {BUNDLED}).", param="model",
                       code="model_not_found")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"'input' may hold at most {MAX_INPUTS} texts.", param="input", code="invalid_value")
    for i, text in enumerate(texts):
        if not text:
            raise InvalidRequest(f"'input[{i}]' is empty.", param=f"input[{i}]", code="invalid_value")
    gate = state.service.gate
    gate.check_model(principal, BUNDLED)
    embedder = LocalEmbedder.shared()
    async with gate.direct(principal, BUNDLED, "embeddings") as use:
        vectors = await embedder.embed_batched(texts, 64)
        use.input_tokens = tokens = embedder.count_tokens(texts)
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
             else np.asarray(v, dtype=np.float64).round(8).tolist()} for i, v in enumerate(vectors)]
    return JSONResponse({"object": "list", "data": data, "model": BUNDLED,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def embeddings_routes(prefixes: tuple[str, ...]) -> list[BaseRoute]:
    return [Route(f"{prefix}/embeddings", create_embeddings, methods=["POST"]) for prefix in prefixes]
