"""The two ClickHouse backends behind one small interface, and ``connect(settings)``.

SQL uses ClickHouse's own ``{name:Type}`` placeholders on both backends: chdb binds them
server-side; for clickhouse-server (18.16 has no query parameters) they become clickhouse-driver's
client-side ``%(name)s`` escaping. Either way no value is formatted into SQL by hand.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from streams.settings import VigilSettings

from .compat import parse_version
from .errors import BackendUnavailable, ClickHouseConfigError, EmbeddedInUse, QueryFailed

log = logging.getLogger(__name__)

Params = Mapping[str, Any] | None
_PLACEHOLDER = re.compile(r"\{(\w+):([^{}]+)\}")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
# Server error codes that may pass on their own: memory, too many parts/queries, timeouts, network,
# (a cluster with insert_quorum) too few live replicas / the previous quorum insert unfinished, and
# 244, a replicated insert that met an ALTER changing the columns in ZooKeeper ("Bad version"): the
# same block again is deduplicated by the replicated table if the first one landed after all.
# 242, a replicated table read-only while ZooKeeper is away, and 279, a Distributed read that found
# no live replica of a shard, pass when ZooKeeper or the shard is back.
_UNKNOWN_DATABASE = 81
_TRANSIENT_CODES = {159, 202, 209, 210, 241, 242, 244, 252, 279, 285, 286, 319, 425}


class Backend(Protocol):
    """What the store and migrations need from a ClickHouse engine. Implementations are thread-safe."""

    name: str
    server_version: tuple[int, ...]

    def execute(self, sql: str, params: Params = None) -> None: ...

    def query(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]: ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...

    def close(self) -> None: ...


def _check_insert_target(table: str, columns: Sequence[str]) -> None:
    for name in (table, *columns):
        if not _IDENT.match(name):
            raise QueryFailed(f"{name!r} is not a plain identifier; table and column names come from code")


# --- clickhouse-server over the native protocol -------------------------------------------------


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def to_driver_sql(sql: str, params: Params) -> tuple[str, dict[str, Any] | None]:
    """``{name:Type}`` -> ``%(name)s``; an Array bound after IN becomes a tuple, which the driver
    renders as ``('a', 'b')`` (18.16 rejects an array literal there)."""
    if not params:
        return sql, None
    values = dict(params)
    escaped = sql.replace("%", "%%")

    def sub(m: re.Match[str]) -> str:
        name, type_ = m.group(1), m.group(2)
        if name not in values:
            raise QueryFailed(f"no value for query parameter {name!r}")
        before = escaped[: m.start()].rstrip()
        if type_.startswith("Array(") and re.search(r"\bIN$", before, re.IGNORECASE):
            values[f"{name}__in"] = tuple(params[name])
            return f"%({name}__in)s"
        return f"%({name})s"

    return _PLACEHOLDER.sub(sub, escaped), values


class ServerBackend:
    """clickhouse-server through clickhouse-driver (native protocol, optional TLS)."""

    name = "server"

    def __init__(self, url: str, *, database: str) -> None:
        from clickhouse_driver import Client

        parts = urlsplit(url)
        if parts.scheme not in ("clickhouse", "clickhouses"):
            raise ClickHouseConfigError(
                f"VIGIL_CLICKHOUSE_URL must start with clickhouse:// or clickhouses:// (TLS), "
                f"got {redact_url(url)}"
            )
        url_db = parts.path.strip("/")
        if url_db and url_db != database:
            raise ClickHouseConfigError(
                f"VIGIL_CLICKHOUSE_URL names database {url_db!r} but VIGIL_CLICKHOUSE_DATABASE is "
                f"{database!r}; drop the path from the URL or make the two agree."
            )
        self.url = redact_url(url)
        self._lock = threading.Lock()
        # Vigil's own database first: a user may be allowed that one only. 'default' when it does
        # not exist yet, for the migrations to create it.
        self._client = Client.from_url(urlunsplit(parts._replace(path=f"/{database}")))
        try:
            rows = self.query("SELECT version()")
        except QueryFailed as e:
            if e.code != _UNKNOWN_DATABASE:
                raise
            self._client = Client.from_url(urlunsplit(parts._replace(path="/default")))
            rows = self.query("SELECT version()")
        self.server_version = parse_version(rows[0][0])

    def _run(self, fn: Any, *args: Any) -> Any:
        from clickhouse_driver import errors as driver_errors

        try:
            with self._lock:
                return fn(*args)
        except driver_errors.ServerException as e:
            first_line = str(e.message).split("\n", 1)[0]
            message = f"ClickHouse at {self.url} refused (code {e.code}): {first_line}"
            if e.code in _TRANSIENT_CODES:
                raise BackendUnavailable(message) from None
            raise QueryFailed(message, e.code) from None
        except (driver_errors.NetworkError, driver_errors.SocketTimeoutError, EOFError, OSError) as e:
            raise BackendUnavailable(
                f"cannot reach ClickHouse at {self.url}: {e}. Check the server is up and reachable "
                "and that VIGIL_CLICKHOUSE_URL (host, port 9000/9440, TLS) is right."
            ) from None
        except driver_errors.Error as e:
            raise QueryFailed(f"ClickHouse at {self.url}: {e}") from None

    def execute(self, sql: str, params: Params = None) -> None:
        self._run(self._client.execute, *to_driver_sql(sql, params))

    def query(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._run(self._client.execute, *to_driver_sql(sql, params))]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        _check_insert_target(table, columns)
        if rows:
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
            self._run(self._client.execute, sql, [tuple(r) for r in rows])

    def close(self) -> None:
        with self._lock:
            self._client.disconnect()


# --- chdb (ClickHouse in-process) ---------------------------------------------------------------


def chdb_param_text(value: Any) -> str:
    """A parameter value in the text form ClickHouse parses query parameters from: a scalar as
    escaped TSV, an array as its quoted literal (read without the TSV layer: escaping it again made
    ``'`` fail the query and ``\\`` match nothing)."""
    if isinstance(value, (list, tuple)):
        return _quoted(value)
    return (
        _plain(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        .replace("\r", "\\r").replace("\0", "\\0")
    )


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime):
        return _time_text(value)
    if isinstance(value, (str, int, float, date)):
        return str(value)
    raise QueryFailed(f"unsupported query parameter type {type(value).__name__}")


def _quoted(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_quoted(v) for v in value) + "]"
    if isinstance(value, (str, datetime, date)):
        text = _plain(value)
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return _plain(value)


def _time_text(value: datetime) -> str:
    utc = value.astimezone(UTC) if value.tzinfo else value
    # %Y does not pad: year 999 would read back as another year
    return f"{utc.year:04d}" + utc.strftime("-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}"


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _time_text(value)
    if isinstance(value, bytes):
        raise QueryFailed("bytes cannot travel in JSONEachRow; store them base64-encoded")
    return value


def _unwrap(type_: str, wrapper: str) -> str | None:
    prefix = wrapper + "("
    return type_[len(prefix) : -1] if type_.startswith(prefix) and type_.endswith(")") else None


def _split_top(args: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(args):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(args[start:i].strip())
            start = i + 1
    return [*out, args[start:].strip()]


def from_json(value: Any, type_: str) -> Any:
    """A JSONCompact value -> the Python value clickhouse-driver would return for that type."""
    for wrapper in ("Nullable", "LowCardinality"):
        inner = _unwrap(type_, wrapper)
        if inner is not None:
            return None if value is None else from_json(value, inner)
    if (inner := _unwrap(type_, "Array")) is not None:
        return [from_json(v, inner) for v in value]
    if (inner := _unwrap(type_, "Map")) is not None:
        k_type, v_type = _split_top(inner)
        return {from_json(k, k_type): from_json(v, v_type) for k, v in value.items()}
    if (inner := _unwrap(type_, "Tuple")) is not None:
        return tuple(from_json(v, t) for v, t in zip(value, _split_top(inner), strict=True))
    if type_.startswith("DateTime"):
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
    if type_ == "Date" or type_ == "Date32":
        return date.fromisoformat(value)
    if type_.startswith(("UInt", "Int")):
        return int(value)
    if type_.startswith(("Float", "Decimal")):
        return None if value is None else float(value)
    if type_ == "Bool":
        return bool(value)
    return value


_open_embedded: dict[str, EmbeddedBackend] = {}
_open_embedded_lock = threading.Lock()


def _probe_directory_lock(path: Path) -> None:
    """ClickHouse flocks <path>/status while a session has the directory open; probe it first so
    the caller gets a clear error instead of chdb's 'Error initializing EmbeddedServer'."""
    status = path / "status"
    if not status.exists():
        return
    with status.open("rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise EmbeddedInUse(
                    f"the embedded ClickHouse at {path} is open in another process (a worker or CLI "
                    "still running?). Only one process may open it: stop the other one, or point "
                    "VIGIL_CLICKHOUSE_URL at a clickhouse-server so several processes can share it."
                ) from None
            raise
        fcntl.flock(fh, fcntl.LOCK_UN)


class EmbeddedBackend:
    """chdb persisted in one directory.

    chdb runs one embedded server per process, bound to one directory, and ClickHouse locks that
    directory: only ONE process may open it, and within a process share this object between threads
    (calls are serialised by a lock) instead of opening a second one.
    """

    name = "embedded"

    def __init__(self, path: Path) -> None:
        from chdb import session

        self.path = path.resolve()
        with _open_embedded_lock:
            if _open_embedded:
                other = next(iter(_open_embedded))
                raise EmbeddedInUse(
                    f"this process already has the embedded ClickHouse at {other} open; chdb allows "
                    "one per process. Reuse that backend (it is thread-safe) or close it first."
                )
            self.path.mkdir(parents=True, exist_ok=True)
            _probe_directory_lock(self.path)
            try:
                self._session = session.Session(str(self.path))
            except RuntimeError as e:
                raise EmbeddedInUse(
                    f"cannot open the embedded ClickHouse at {self.path}: {e}. If another process "
                    "has it open, stop that process; only one may open the directory."
                ) from None
            _open_embedded[str(self.path)] = self
        self._lock = threading.Lock()
        self._closed = False
        self.server_version = parse_version(self.query("SELECT version()")[0][0])

    def _run(self, sql: str, params: Params) -> Any:
        from chdb import ChdbError

        bound = {k: chdb_param_text(v) for k, v in params.items()} if params else None
        try:
            with self._lock:
                if self._closed:
                    raise BackendUnavailable(f"the embedded ClickHouse at {self.path} is closed")
                return self._session.query(sql, "JSONCompact", params=bound)
        except (ChdbError, RuntimeError) as e:
            text = str(e).split("\n", 1)[0]
            if re.search(r"\((MEMORY_LIMIT_EXCEEDED|TOO_MANY_PARTS)\)", text):
                raise BackendUnavailable(f"embedded ClickHouse at {self.path}: {text}") from None
            raise QueryFailed(f"embedded ClickHouse at {self.path}: {text}") from None

    def execute(self, sql: str, params: Params = None) -> None:
        self._run(sql, params)

    def query(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        raw = self._run(sql, params).bytes()
        if not raw:
            return []
        doc = json.loads(raw)
        types = [m["type"] for m in doc["meta"]]
        return [tuple(from_json(v, t) for v, t in zip(row, types, strict=True)) for row in doc["data"]]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        _check_insert_target(table, columns)
        if not rows:
            return
        # JSONEachRow data is parsed as data, never as SQL.
        lines = "\n".join(
            json.dumps({c: _json_value(v) for c, v in zip(columns, row, strict=True)}, ensure_ascii=False)
            for row in rows
        )
        self._run(f"INSERT INTO {table} ({', '.join(columns)}) FORMAT JSONEachRow\n{lines}", None)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._session.close()
        with _open_embedded_lock:
            _open_embedded.pop(str(self.path), None)


def connect(settings: VigilSettings) -> Backend:
    """clickhouse-server when ``clickhouse_url`` is set, else chdb under ``embedded_clickhouse_path``."""
    backend: Backend
    if url := settings.clickhouse_server_url:
        backend = ServerBackend(url, database=settings.clickhouse_database)
        where = backend.url
    else:
        backend = EmbeddedBackend(settings.embedded_clickhouse_path)
        where = f"chdb at {backend.path}"
    log.info("ClickHouse %s (%s)", ".".join(map(str, backend.server_version)), where)
    return backend
