"""Text embeddings: the local model a package ships, or an OpenAI-compatible ``/embeddings`` endpoint.

Vectors come back as float32 rows of unit length, so cosine similarity is a dot product.
``name`` identifies the model: changing it re-embeds a knowledge assistant on its next ingest.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from typing import Any

import aiohttp
import numpy as np
import orjson

from opensupervisor.errors import ConfigError, ToolError

Vectors = np.ndarray[Any, np.dtype[np.float32]]


class Embedder(ABC):
    name: str

    @abstractmethod
    async def embed(self, texts: list[str]) -> Vectors:
        """One unit-length row per text."""

    async def embed_batched(self, texts: list[str], batch: int) -> Vectors:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return np.vstack([await self.embed(texts[i:i + batch]) for i in range(0, len(texts), batch)])

    async def aclose(self) -> None:
        """Release clients and weights."""


def normalized(rows: Any) -> Vectors:
    matrix = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: Vectors = (matrix / np.where(norms == 0, 1, norms)).astype(np.float32)
    return out


class OpenAIEmbeddings(Embedder):
    """Any server with the OpenAI embeddings API (OpenAI, vLLM, Ollama, LiteLLM, TEI …)."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}"
        self.timeout_s = timeout_s
        self._key = ""
        if api_key_env:
            self._key = os.environ.get(api_key_env, "")
            if not self._key:
                raise ConfigError(f"embedding: environment variable {api_key_env} is not set")
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def embed(self, texts: list[str]) -> Vectors:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:  # a session belongs to the loop that made it
            self._session, self._loop = aiohttp.ClientSession(), loop
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        body = orjson.dumps({"model": self.model, "input": texts})
        try:
            async with asyncio.timeout(self.timeout_s), self._session.post(
                    f"{self.base_url}/embeddings", data=body, headers=headers) as resp:
                raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ToolError(f"the embeddings endpoint is unreachable ({type(exc).__name__})") from exc
        if resp.status != 200:
            raise ToolError(f"the embeddings endpoint answered HTTP {resp.status}")
        data = sorted(orjson.loads(raw)["data"], key=lambda d: d["index"])
        return normalized([d["embedding"] for d in data])

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
