"""The composition root: the service's parts (store, watch hub, perception, stream manager or
Redis worker, token store) built from settings in one place.

The CLI, the API, the demo and the benchmarks build what they run through `open_store` and
`build_services`, so every entry point wires the same parts the same way. Heavy modules are
imported when a part is built, so a one-shot command pays only for what it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from livesense.config import SecuritySettings, Settings
from livesense.errors import LivesenseError

if TYPE_CHECKING:
    from livesense.api.tokens import TokenStore
    from livesense.memory.store_base import Store
    from livesense.memory.watch import WatchHub
    from livesense.memory.work_list import WorkList
    from livesense.pipeline.manager import StreamManager
    from livesense.pipeline.perception import Perception
    from livesense.pipeline.worker import Worker


@dataclass
class Services:
    """What the API serves: the memory, the streams this process runs and who may ask."""

    store: Store
    manager: StreamManager | None
    hub: WatchHub
    token: str | None = None  # the admin token; None: open API (bind to loopback only)
    tokens: TokenStore | None = None  # scoped tokens
    security: SecuritySettings | None = None
    work: WorkList | None = None  # Redis work list: streams run by workers, not here
    source: str | None = None  # the stream `livesense run` ingests: /healthz reports on it
    perception: Perception | None = None  # the models the manager or worker runs
    worker: Worker | None = None  # takes streams from the work list (shared memory only)


def open_store(
    settings: Settings,
    *,
    readonly: bool = False,
    hub: WatchHub | None = None,
    follow: bool = False,
) -> Store:
    """The Redis store when a Redis URL is set (follow: keep a query index in sync with other
    writers), else the memory directory (a reader needs one that exists)."""
    from livesense.memory.store import MemoryStore

    if settings.redis.url:
        from livesense.memory.redis_store import RedisStore

        return RedisStore(
            settings.redis.url,
            settings.store,
            settings.redis,
            readonly=readonly,
            follow=follow,
            hub=hub,
            vector_index={"auto": None, "on": True, "off": False}[settings.redis.vector_index],
        )
    memory = settings.memory
    if readonly and not (memory / "memory.db").exists():
        raise LivesenseError(
            f"There is no livesense memory in {memory} yet; ingest something first."
        )
    return MemoryStore(memory, settings.store, readonly=readonly, hub=hub)


def open_work_list(settings: Settings) -> WorkList:
    """The Redis work list the workers take streams from (shared memory only)."""
    from livesense.memory.work_list import WorkList

    return WorkList(settings.redis.url or "", settings.redis.prefix, settings.security.source_key)


def build_services(
    settings: Settings,
    store: Store,
    hub: WatchHub | None = None,
    *,
    ingest: bool = True,
    work: WorkList | None = None,
    token: str | None = None,
    tokens: bool = False,
    source: str | None = None,
    max_streams: int | None = None,
) -> Services:
    """The service over an open store.

    ingest: this process runs streams (a Redis worker on `work` when a work list is given,
    else a stream manager); without it streams run elsewhere and only the models are built
    (not loaded). tokens: open the scoped-token store beside the memory. `max_streams`
    bounds the manager's streams (its default otherwise).
    """
    from livesense.memory.watch import WatchHub
    from livesense.pipeline.manager import StreamManager
    from livesense.pipeline.perception import Perception

    perception = Perception.from_settings(settings)
    manager: StreamManager | None = None
    worker: Worker | None = None
    if ingest and work is not None:
        from livesense.memory.redis_store import RedisStore
        from livesense.pipeline.worker import Worker

        if not isinstance(store, RedisStore):
            raise LivesenseError("A worker needs the shared (Redis) memory.")
        worker = Worker(settings, store, work, perception)
        manager = worker.manager
    elif ingest:
        extra = {} if max_streams is None else {"max_streams": max_streams}
        manager = StreamManager(settings, store, perception, **extra)
    token_store = None
    if tokens:
        from livesense.api.tokens import open_token_store

        token_store = open_token_store(settings.memory, settings.redis.url, settings.redis.prefix)
    return Services(
        store=store,
        manager=manager,
        hub=hub if hub is not None else (store.hub or WatchHub()),
        token=token,
        tokens=token_store,
        security=settings.security,
        work=work,
        source=source,
        perception=perception,
        worker=worker,
    )


def open_services(
    settings: Settings, *, hub: WatchHub | None = None, max_streams: int | None = None
) -> Services:
    """A writable store (pushing new moments to `hub`, if given) with a stream manager over
    it: the demo's and benchmarks' service. The caller closes its store."""
    store = open_store(settings, hub=hub)
    return build_services(settings, store, hub, max_streams=max_streams)
