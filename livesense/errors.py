"""Errors that reach the user as one clear sentence."""

from __future__ import annotations


class LivesenseError(Exception):
    """Base error: its message is one sentence meant for the user."""

    status = 400  # HTTP status the API answers with


class SourceError(LivesenseError):
    """A source is missing, unreachable, corrupt or unsupported."""

    status = 422


class ModelMissingError(LivesenseError):
    """A model package or file is not installed."""

    status = 503


class QueryError(LivesenseError):
    """A query is empty, too long or otherwise malformed."""

    status = 400


class NotFoundError(LivesenseError):
    status = 404


class StreamBusyError(LivesenseError):
    """The stream is being ingested, so it cannot be changed that way now."""

    status = 409


class ConfigError(LivesenseError):
    status = 400


class StoreUnavailableError(LivesenseError):
    """The shared memory (Redis) cannot be reached: the request may succeed later."""

    status = 503


def missing_package(package: str, what: str, extra: str | None = None) -> ModelMissingError:
    how = f"pip install 'livesense[{extra}]'" if extra else f"pip install {package}"
    return ModelMissingError(
        f"{what} needs the package '{package}', which is not installed: {how}."
    )


def first_error(e: BaseException) -> BaseException:
    """The error to tell the user about: a group of errors (a TaskGroup's) gives its first
    LivesenseError, else its first error that is not a cancellation."""
    if not isinstance(e, BaseExceptionGroup):
        return e
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for x in g.exceptions:
            if isinstance(x, BaseExceptionGroup):
                walk(x)
            else:
                leaves.append(x)

    walk(e)
    for x in leaves:
        if isinstance(x, LivesenseError):
            return x
    import asyncio

    real = [x for x in leaves if not isinstance(x, asyncio.CancelledError)]
    return (real or leaves or [e])[0]
