"""Typed ClickHouse errors; each message says what to check or do."""

from __future__ import annotations


class ClickHouseError(Exception):
    """Base of every error raised by streams.clickhouse."""


class ClickHouseConfigError(ClickHouseError):
    """The settings do not describe a usable ClickHouse (bad URL, conflicting database names)."""


class EmbeddedInUse(ClickHouseError):
    """The embedded chdb directory is already open in this or another process."""


class UnsupportedServer(ClickHouseError):
    """The server is older than the oldest release Vigil's schema supports."""


class MigrationError(ClickHouseError):
    """A migration file is malformed, or one already applied has been edited."""


class BackendUnavailable(ClickHouseError):
    """ClickHouse could not be reached or refused for a reason that may pass (retryable)."""


class QueryFailed(ClickHouseError):
    """ClickHouse rejected a statement (not retryable: the statement or data is wrong). ``code`` is
    the server's error code where the server gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class StorageUnavailable(ClickHouseError):
    """Writes or reads kept failing after every retry; leave the Kafka offsets uncommitted."""


class RangeTooLarge(ClickHouseError):
    """A range read holds more rows than its limit: cut short, it would leave part of the range out."""
