"""The rolling memory: tiered moments, hybrid search, answers and standing queries, kept in a
directory (MemoryStore) or in Redis for many processes (RedisStore), behind one Store API."""

from livesense.memory.answer import compose_answer
from livesense.memory.index import VectorIndex
from livesense.memory.redis_store import RedisStore
from livesense.memory.search import check_query, check_stream, hybrid_score
from livesense.memory.store import MemoryStore
from livesense.memory.store_base import Store
from livesense.memory.summary import StreamSummary
from livesense.memory.tiers import StreamTiers, TierBudget, TimelineMoment
from livesense.memory.watch import Subscription, WatchHub

__all__ = [
    "MemoryStore",
    "RedisStore",
    "Store",
    "StreamSummary",
    "StreamTiers",
    "Subscription",
    "TierBudget",
    "TimelineMoment",
    "VectorIndex",
    "WatchHub",
    "check_query",
    "check_stream",
    "compose_answer",
    "hybrid_score",
]
