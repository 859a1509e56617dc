"""The rolling memory: stored moments, hybrid search, answers and standing queries."""

from livesense.memory.answer import compose_answer
from livesense.memory.index import VectorIndex
from livesense.memory.search import check_query, check_stream, hybrid_score
from livesense.memory.store import MemoryStore
from livesense.memory.watch import Subscription, WatchHub

__all__ = [
    "MemoryStore",
    "Subscription",
    "VectorIndex",
    "WatchHub",
    "check_query",
    "check_stream",
    "compose_answer",
    "hybrid_score",
]
