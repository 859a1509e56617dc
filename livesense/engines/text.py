"""Text embeddings (all-MiniLM-L6-v2 int8 ONNX) for evidence and queries.

The model runs behind the engine interface (best backend per the settings), and, when
batching is on, behind the shared cross-stream batcher: the Combiners of all streams and the
query path fill one batch. Texts in a batch are grouped by length bucket and padded only to
the longest of their group, so a short query never pays for a long transcript.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np

from livesense.engines.batcher import Batcher, bucket, groups
from livesense.engines.engine import Engine
from livesense.engines.engine_factory import EngineFactory, shared_factory
from livesense.engines.model_spec import TEXT_LENGTHS, text_spec
from livesense.engines.models import minilm_tokenizer

DIM = 384
MAX_TOKENS = 128
BUCKETS = TEXT_LENGTHS
"""Token-length buckets: a batch is split so that each group pads to its own bucket's longest
(to the bucket's length itself where the engine runs fixed shapes)."""
QUERY_CACHE = 256
"""Query vectors kept by exact text (the most recently used): a repeated search, an ask after
a search, or a client polling the same question skips the model."""


class TextEmbedder:
    """Sentence vectors: mean-pooled last hidden state, L2-normalised, float32 (N, 384)."""

    dim = DIM

    def __init__(
        self,
        threads: int = 0,
        max_tokens: int = MAX_TOKENS,
        *,
        engine: Engine | None = None,
        factory: EngineFactory | None = None,
        batch: bool = True,
    ) -> None:
        from tokenizers import Tokenizer

        factory = factory or shared_factory()
        self.max_tokens = max_tokens
        self.engine = engine or factory.engine(
            text_spec(max_tokens=max_tokens), threads=threads or None
        )
        self.tokenizer = Tokenizer.from_file(str(minilm_tokenizer()))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()
        self._input_names = {i.name for i in self.engine.inputs()}
        self._lengths = tuple(n for n in BUCKETS if n < max_tokens) + (max_tokens,)
        self.batcher: Batcher[str, np.ndarray] | None = None
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queries_lock = threading.Lock()
        if batch:
            name = f"{self.engine.name}/{max_tokens}"
            self.batcher = (
                factory.batcher(name, self.embed_rows, key=self.bucket_of)
                if engine is None
                else None
            )

    def bucket_of(self, text: str) -> int:
        """The token-length bucket of a text (the batcher's key)."""
        n = max(1, len(self.tokenizer.encode(text or " ").ids))
        return bucket(n, self._lengths)

    def embed(self, texts: Sequence[str], stream: Hashable | None = None) -> np.ndarray:
        """Vectors of `texts`; `stream` names the caller for fair batching (default: thread)."""
        if not texts:
            return np.zeros((0, DIM), np.float32)
        if self.batcher is not None:
            return np.stack(self.batcher(list(texts), stream)).astype(np.float32, copy=False)
        return self.embed_now(list(texts))

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def embed_query(self, text: str) -> np.ndarray:
        """A query's vector (read-only), from the cache of the last QUERY_CACHE query texts
        when the exact text was seen; the same vector as embed([text])[0]."""
        with self._queries_lock:
            vec = self._queries.get(text)
            if vec is not None:
                self._queries.move_to_end(text)
                return vec
        vec = self.embed([text])[0].copy()
        vec.flags.writeable = False
        with self._queries_lock:
            self._queries[text] = vec
            self._queries.move_to_end(text)
            while len(self._queries) > QUERY_CACHE:
                self._queries.popitem(last=False)
        return vec

    def embed_rows(self, texts: list[str]) -> list[np.ndarray]:
        """The batcher's function: one vector per text."""
        return list(self.embed_now(texts))

    def embed_now(self, texts: list[str]) -> np.ndarray:
        """Embed on the calling thread, bypassing the batcher."""
        encs = self.tokenizer.encode_batch([t or " " for t in texts])
        lengths = [max(1, len(e.ids)) for e in encs]
        out = np.empty((len(texts), DIM), np.float32)
        step = self.engine.max_batch or len(texts)
        edges = [bucket(n, self._lengths) for n in lengths]
        for group in groups(edges):
            for k in range(0, len(group), step):
                rows = group[k : k + step]
                width = max(lengths[i] for i in rows)
                if self.engine.fixed_shapes:
                    width = max(width, edges[rows[0]])
                ids = np.zeros((len(rows), width), np.int64)
                mask = np.zeros((len(rows), width), np.int64)
                for r, i in enumerate(rows):
                    ids[r, : len(encs[i].ids)] = encs[i].ids
                    mask[r, : len(encs[i].ids)] = 1
                out[rows] = self._pool(ids, mask)
        return out

    def _pool(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self.engine.run(feeds)[0], np.float32)
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


_shared: tuple[EngineFactory, TextEmbedder] | None = None
_shared_lock = threading.Lock()


def shared_text_embedder() -> TextEmbedder:
    """One embedder per process and engine factory: the query path and Combiners share it."""
    global _shared
    factory = shared_factory()
    with _shared_lock:
        if _shared is None or _shared[0] is not factory:
            _shared = (factory, TextEmbedder(factory=factory))
        return _shared[1]
