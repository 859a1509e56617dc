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
