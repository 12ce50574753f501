"""ClickHouse storage: clickhouse-server (native protocol) or embedded chdb, one interface.

Start with ``open_store(settings)``; see store.ClickHouseStore for the calls the worker makes.
"""

from .backends import Backend, EmbeddedBackend, ServerBackend, connect
from .compat import CompatLevel
from .errors import (
    BackendUnavailable,
    ClickHouseConfigError,
    ClickHouseError,
    EmbeddedInUse,
    MigrationError,
    QueryFailed,
    StorageUnavailable,
    UnsupportedServer,
)
from .migrations import migrate
from .store import ClickHouseStore, LabelCount, StoreSummary, TickerNegativeShare, open_store

__all__ = [
    "Backend", "BackendUnavailable", "ClickHouseConfigError", "ClickHouseError", "ClickHouseStore",
    "CompatLevel", "EmbeddedBackend", "EmbeddedInUse", "LabelCount", "MigrationError", "QueryFailed",
    "ServerBackend", "StorageUnavailable", "StoreSummary", "TickerNegativeShare", "UnsupportedServer",
    "connect", "migrate", "open_store",
]
