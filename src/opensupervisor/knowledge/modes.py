"""How a knowledge assistant finds its passages (its ``search`` setting), apart from the search itself
(``knowledge.search``), so that reading a workspace file loads no index, embedder or BM25."""

from __future__ import annotations

from typing import Literal

Mode = Literal["hybrid", "lexical", "vector"]
