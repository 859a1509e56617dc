"""`livesense token create|list|revoke`: scoped API tokens, stored only as hashes."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from livesense.api.tokens import TokenStore, open_token_store
from livesense.config import load_settings

token_app = typer.Typer(
    help="Scoped API tokens: a token may read, publish to or manage one stream.",
    no_args_is_help=True,
)
out = Console()

MemoryOpt = Annotated[
    Path | None, typer.Option("--memory", help="Memory directory holding tokens.db.")
]
RedisOpt = Annotated[
    str | None, typer.Option("--redis", help="redis://host:port/db: tokens kept in Redis.")
]
PrefixOpt = Annotated[
    str | None, typer.Option("--redis-prefix", help="Prefix of the Redis keys (default ls).")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML settings file (LIVESENSE_* env also read).")
]


def _store(
    memory: Path | None, redis: str | None, prefix: str | None, config: Path | None
) -> TokenStore:
    """The token store the settings name: file < LIVESENSE_* environment < the flags given."""
    s = load_settings(
        config,
        flags={"memory": "--memory", "redis.url": "--redis", "redis.prefix": "--redis-prefix"},
        memory=memory,
        **{"redis.url": redis, "redis.prefix": prefix},
    )
    return open_token_store(s.memory, s.redis.url, s.redis.prefix)


@token_app.command("create")
def create(
    scope: Annotated[
        str, typer.Option("--scope", help="read (search, ask, watch, timeline, keyframes), "
                          "publish (WHIP) or admin (both, and stop the stream).")
    ] = "read",
    stream: Annotated[
        str | None, typer.Option("--stream", help="The one stream it covers (admin: all if none).")
    ] = None,
    memory: MemoryOpt = None,
    redis: RedisOpt = None,
    redis_prefix: PrefixOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Issue a token and print it: it is shown this once and stored only as a hash."""
    with closing(_store(memory, redis, redis_prefix, config)) as store:
        token, info = store.create(scope, stream)
    if as_json:
        print(json.dumps({"token": token, **info.to_json()}))
    else:
        print(token)


@token_app.command("revoke")
def revoke(
    token: Annotated[str, typer.Argument(help="The token's id (see `token list`) or the token.")],
    memory: MemoryOpt = None,
    redis: RedisOpt = None,
    redis_prefix: PrefixOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a token: the next request that presents it is refused."""
    with closing(_store(memory, redis, redis_prefix, config)) as store:
        info = store.revoke(token)
    out.print(f"revoked token {info.id} ({info.scope.value} on {info.stream or 'all streams'})")


@token_app.command("list")
def list_tokens(
    memory: MemoryOpt = None,
    redis: RedisOpt = None,
    redis_prefix: PrefixOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List issued tokens (ids, scopes, streams; never the tokens)."""
    with closing(_store(memory, redis, redis_prefix, config)) as store:
        infos = store.list()
    if as_json:
        print(json.dumps({"tokens": [i.to_json() for i in infos]}))
        return
    for i in infos:
        state = "revoked" if i.revoked is not None else "active"
        out.print(f"{i.id}  {i.scope.value:<7}  {i.stream or '*':<20}  {state}")
