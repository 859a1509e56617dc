"""Prometheus metrics: snippets, per-stage latency, drops, lag behind live."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SNIPPETS = Counter("livesense_snippets_total", "Snippets stored in memory.", ["stream"])
STAGE_SECONDS = Histogram(
    "livesense_stage_seconds",
    "Time one snippet spends in a stage.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
)
DROPS = Counter(
    "livesense_drops_total", "Items dropped by a bounded queue or shed.", ["stream", "what"]
)
LAG = Gauge(
    "livesense_lag_seconds", "How far a live stream's stored snippets trail live.", ["stream"]
)
QUEUE_FILL = Gauge(
    "livesense_queue_items", "Items waiting in a pipeline queue.", ["stream", "queue"]
)
END_TO_QUERYABLE = Histogram(
    "livesense_snippet_queryable_seconds",
    "From a snippet's end (wall clock) until it is searchable.",
    buckets=(0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
)
STREAMS = Gauge("livesense_streams", "Streams being ingested.")
QUERY_SECONDS = Histogram(
    "livesense_query_seconds",
    "Search and ask latency.",
    ["kind"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
