"""Messages to replay into Kafka: the bundled data sets, users' JSONL/CSV files, and the producer.

The readers are pure (files in, ``OutgoingMessage`` out). ``replay`` is the Kafka edge: one
aiokafka producer, key = message id (an id always lands on one partition, so its re-deliveries
stay in order), paced against a monotonic clock so a long replay at N msg/s does not drift.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import functools
import itertools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from streams.contracts import INPUT_MODELS, Kind, NewsItem, SupportMessage
from streams.tickers import cashtags

log = logging.getLogger(__name__)

T = TypeVar("T")

# Fixed, so every run of the bundled data carries the same event times.
BUNDLED_START = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
_CHANNELS = ("chat", "email", "app", "phone", "social", "web")
_CUSTOMERS = 2_500  # bundled support messages come from this many distinct customers
_MAX_TICKERS = 32  # NewsItem.tickers' bound


class ReplayInputError(ValueError):
    """A file to replay cannot be read as the messages it claims to hold."""


class ReplayError(RuntimeError):
    """Kafka was unreachable, or some messages were not acknowledged by it."""

    def __init__(self, message: str, counts: ReplayCounts | None = None) -> None:
        super().__init__(message)
        self.counts = counts


# --------------------------------------------------------------------------------------------
# What goes on the wire
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One record to produce to the raw topic of ``kind``."""

    kind: Kind
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, kind: Kind, item: NewsItem | SupportMessage) -> OutgoingMessage:
        return cls(kind, item.id.encode(), item.model_dump_json(exclude_none=True).encode())

    @classmethod
    def raw(cls, kind: Kind, key: str | bytes | None, value: bytes | None) -> OutgoingMessage:
        """Bytes exactly as given: how bad input is injected to exercise the dead-letter path."""
        return cls(kind, key.encode() if isinstance(key, str) else key, value)


def interleave(*sources: Iterable[T], ratio: Sequence[int] | None = None) -> Iterator[T]:
    """Take ``ratio[i]`` items from source i in turn; an exhausted source drops out."""
    weights = list(ratio) if ratio is not None else [1] * len(sources)
    if len(weights) != len(sources) or any(w < 1 for w in weights):
        raise ValueError(f"ratio {weights} must give a positive weight to each of {len(sources)} sources")
    live = [(iter(s), w) for s, w in zip(sources, weights, strict=True)]
    while live:
        still = []
        for it, w in live:
            chunk = list(itertools.islice(it, w))
            yield from chunk
            if len(chunk) == w:
                still.append((it, w))
        live = still


# --------------------------------------------------------------------------------------------
# The bundled data sets
# --------------------------------------------------------------------------------------------


def _csv_texts(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise ReplayInputError(f"bundled data file {path} is missing; check VIGIL_BUNDLED_DATA_DIR")
    with path.open(encoding="utf-8", newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f)):
            text = row.get("text") or ""
            if text.strip():
                yield row_no, text


def bundled_news(
    data_dir: Path, *, start: datetime = BUNDLED_START, step_s: float = 30.0, limit: int | None = None
) -> Iterator[NewsItem]:
    """Financial tweets (``tw-<row>``) and PhraseBank sentences (``fpb-<row>``), interleaved 5:2
    (their size ratio), published ``step_s`` apart in that order; tickers from the cashtags."""
    tweets = ((f"tw-{row}", "twitter", text) for row, text in _csv_texts(data_dir / "twitter_financial_news" / "train.csv"))
    sentences = ((f"fpb-{row}", "phrasebank", text) for row, text in _csv_texts(data_dir / "financial_phrasebank" / "train.csv"))
    rows = itertools.islice(interleave(tweets, sentences, ratio=(5, 2)), limit)
    for pos, (item_id, source, text) in enumerate(rows):
        yield NewsItem(
            id=item_id,
            source=source,
            published_at=start + timedelta(seconds=pos * step_s),
            headline=text,
            tickers=cashtags(text)[:_MAX_TICKERS] or None,
        )


def bundled_support(
    data_dir: Path, *, start: datetime = BUNDLED_START, step_s: float = 60.0, limit: int | None = None
) -> Iterator[SupportMessage]:
    """Banking77 queries (``b77-<row>``) over rotating channels from a fixed set of customers."""
    rows = itertools.islice(_csv_texts(data_dir / "banking77" / "train.csv"), limit)
    for pos, (row, text) in enumerate(rows):
        yield SupportMessage(
            id=f"b77-{row}",
            channel=_CHANNELS[row % len(_CHANNELS)],
            customer_id=f"cust-{(row * 7919) % _CUSTOMERS:04d}",
            text=text,
            created_at=start + timedelta(seconds=pos * step_s),
        )


# --------------------------------------------------------------------------------------------
# Users' files
# --------------------------------------------------------------------------------------------


def _key_of(obj: Any) -> bytes | None:
    if isinstance(obj, dict) and isinstance(obj.get("id"), str) and obj["id"]:
        return obj["id"].encode("utf-8", errors="surrogatepass")
    return None


def _jsonl(path: Path, kind: Kind) -> Iterator[OutgoingMessage]:
    with path.open("rb") as f:
        for n, line in enumerate(f):
            raw = line.rstrip(b"\r\n")
            if n == 0:  # a byte order mark (Notepad, PowerShell, Excel) is the file's, not the record's
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            try:
                key = _key_of(json.loads(raw))
            except (ValueError, RecursionError):  # the worker will say what is wrong with it
                key = None
            yield OutgoingMessage(kind, key, raw)


_LIST_SPLIT = re.compile(r"[\s,;]+")
_EXTRA_CELLS = "__extra_cells__"


def _csv(path: Path, kind: Kind, columns: Mapping[str, str | None] | None) -> Iterator[OutgoingMessage]:
    model = INPUT_MODELS[kind]
    fields = model.model_fields
    mapping = dict(columns or {})
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, restkey=_EXTRA_CELLS)
            header = reader.fieldnames or []
            target = {col: mapping.get(col, col) for col in header}
            unknown = [c for c, t in target.items() if t is not None and t not in fields]
            if unknown:
                raise ReplayInputError(
                    f"{path}: column(s) {unknown} are not {model.__name__} fields ({', '.join(fields)}); "
                    "rename them, or map them (a column mapped to None is dropped)"
                )
            required = [n for n, info in fields.items() if info.is_required()]
            absent = [n for n in required if n not in target.values()]
            if absent:
                raise ReplayInputError(f"{path}: no column for the required {model.__name__} field(s) {absent}")
            for row in reader:
                obj: dict[str, Any] = {}
                for col, cell in row.items():
                    if col == _EXTRA_CELLS:
                        obj[_EXTRA_CELLS] = cell  # more cells than headers: let the worker refuse it
                        continue
                    name = target.get(col)
                    if name is None or cell is None or cell == "":
                        continue
                    obj[name] = [t for t in _LIST_SPLIT.split(cell) if t] if name == "tickers" else cell
                yield OutgoingMessage(kind, _key_of(obj), json.dumps(obj, ensure_ascii=False).encode())
    except UnicodeDecodeError as e:
        raise ReplayInputError(f"{path}: not UTF-8 ({e}); re-save it as UTF-8") from e


def read_messages(
    path: Path, kind: Kind, *, columns: Mapping[str, str | None] | None = None
) -> Iterator[OutgoingMessage]:
    """Messages from a ``.jsonl``/``.ndjson`` file (each line's raw bytes, valid or not) or a
    ``.csv`` file with a header naming contract fields (``columns`` renames or drops headers;
    ``tickers`` cells are split on commas/spaces)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl(path, kind)
    if suffix == ".csv":
        return _csv(path, kind, columns)
    raise ReplayInputError(f"{path}: expected a .jsonl, .ndjson or .csv file, got {suffix or 'no extension'!r}")


# --------------------------------------------------------------------------------------------
# Producing
# --------------------------------------------------------------------------------------------


class Pacer:
    """When to send message ``n`` at ``rate_per_s``: ``start + n / rate``, against a monotonic
    clock, so sleeping late once is caught up rather than added to every later message.
    Messages go in bursts of ``burst`` (about 5 ms worth) because sleeping per message costs more
    than the gap at thousands per second."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= rate_per_s < math.inf:
            raise ValueError(f"the rate must be a finite number >= 0 (0: as fast as possible), got {rate_per_s}")
        self.rate = rate_per_s
        self.burst = max(1, math.ceil(rate_per_s * 0.005)) if rate_per_s else 0
        self._clock = clock
        self._start = clock()

    def restart(self) -> None:
        """Message 0 is due now."""
        self._start = self._clock()

    def delay(self, n: int) -> float:
        """Seconds to wait before sending message ``n`` (0-based); 0 unless it starts a burst."""
        if not self.rate or n % self.burst:
            return 0.0
        return max(0.0, self._start + n / self.rate - self._clock())


@dataclass
class ReplayCounts:
    sent: int = 0
    failed: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def msgs_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        topics = ", ".join(f"{t}: {n}" for t, n in self.by_topic.items())
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.sent} messages ({topics}){failed} in {self.seconds:.1f} s ({self.msgs_per_s:,.0f} msg/s)"


async def replay(
    bootstrap: str,
    topic_by_kind: Mapping[str, str],
    messages: Iterable[OutgoingMessage],
    *,
    rate_per_s: float = 0.0,
    on_progress: Callable[[int], None] | None = None,
    progress_interval_s: float = 0.1,
    kafka_kwargs: Mapping[str, Any] | None = None,
    linger_ms: int = 5,
    idempotent: bool = False,
    on_acked: Callable[[int], None] | None = None,
) -> ReplayCounts:
    """Produce ``messages`` to their kind's topic, acks="all", and wait until all are acknowledged.

    ``rate_per_s=0`` sends as fast as the broker takes them. ``on_progress(sent)`` is called about
    every ``progress_interval_s`` and once at the end; ``on_acked(n)`` once Kafka acknowledged
    message ``n`` (0-based, in the order of ``messages``). ``idempotent`` needs broker support for
    InitProducerId (Tansu 0.6 answers it with an error, so it is off by default). Raises
    ReplayError when Kafka is unreachable or any message was not acknowledged.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError, MessageSizeTooLargeError

    pacer = Pacer(rate_per_s)  # a bad rate is refused before anything connects
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=linger_ms,
        enable_idempotence=idempotent,
        client_id="vigil-replay",
        **dict(kafka_kwargs or {}),
    )
    try:
        await producer.start()
    except KafkaError as e:
        await producer.stop()
        raise ReplayError(
            f"could not start a producer on {bootstrap} ({type(e).__name__}: {e}); "
            "check VIGIL_KAFKA_BROKERS and the security settings"
        ) from e

    pacer.restart()  # time spent connecting is no lag to catch up in a burst
    counts = ReplayCounts()
    pending: set[asyncio.Future[Any]] = set()
    first_error: list[BaseException] = []
    stopped = ""

    def failed(error: BaseException) -> None:
        counts.failed += 1
        if not first_error:
            first_error.append(error)

    def delivered(n: int, fut: asyncio.Future[Any]) -> None:
        pending.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            failed(fut.exception() if not fut.cancelled() else asyncio.CancelledError())
        elif on_acked is not None:
            on_acked(n)

    started = time.monotonic()
    last_progress = started
    try:
        for n, msg in enumerate(messages):
            wait = pacer.delay(n)
            if wait > 0:
                await asyncio.sleep(wait)
            topic = topic_by_kind[msg.kind]
            counts.sent += 1
            counts.by_topic[topic] = counts.by_topic.get(topic, 0) + 1
            try:
                fut = await producer.send(topic, value=msg.value, key=msg.key)
            except MessageSizeTooLargeError as e:  # this message only: the next ones may go
                failed(e)
                continue
            except KafkaError as e:  # the producer gave up (no metadata or room in time): so would the next
                failed(e)
                stopped = f"; sending stopped at message {n + 1}"
                break
            pending.add(fut)
            fut.add_done_callback(functools.partial(delivered, n))
            if on_progress is not None and time.monotonic() - last_progress >= progress_interval_s:
                last_progress = time.monotonic()
                on_progress(counts.sent)
        await producer.flush()
        if pending:
            await asyncio.wait(list(pending))
    finally:
        await producer.stop()
    counts.seconds = time.monotonic() - started
    if on_progress is not None:
        on_progress(counts.sent)
    if counts.failed:
        raise ReplayError(
            f"{counts.failed} of {counts.sent} messages were not acknowledged by {bootstrap}{stopped}; "
            f"first error: {first_error[0]!r}",
            counts,
        )
    log.info("replayed %s", counts)
    return counts
