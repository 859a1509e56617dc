"""Text embeddings (all-MiniLM-L6-v2 int8 ONNX) for evidence and queries."""

from __future__ import annotations

import functools
import threading

import numpy as np

from livesense.engines.models import minilm_onnx, minilm_tokenizer
from livesense.engines.onnx import OnnxEngine

DIM = 384
MAX_TOKENS = 128


class TextEmbedder:
    """Sentence vectors: mean-pooled last hidden state, L2-normalised, float32 (N, 384)."""

    dim = DIM

    def __init__(self, threads: int = 0, max_tokens: int = MAX_TOKENS) -> None:
        from tokenizers import Tokenizer

        self.engine = OnnxEngine(minilm_onnx(), name="text-minilm", threads=threads)
        self.tokenizer = Tokenizer.from_file(str(minilm_tokenizer()))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._input_names = {i.name for i in self.engine.inputs()}
        self._lock = threading.Lock()  # the tokenizer's padding state is shared

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), np.float32)
        with self._lock:
            encs = self.tokenizer.encode_batch([t or " " for t in texts])
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.engine.run(feeds)[0]
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


@functools.lru_cache(maxsize=1)
def shared_text_embedder() -> TextEmbedder:
    """One embedder per process: the query path and the Combiner share it."""
    return TextEmbedder()
