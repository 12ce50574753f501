"""Message contracts: every message that crosses a Kafka or ClickHouse boundary is one of these.

Inputs forbid unknown fields (a typo in a producer is a dead letter with the field named, not a
silently dropped value) and bound every text field.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator

from streams.tickers import DECLARED_TICKER_PATTERN, DEFAULT_MAX_TICKERS, MAX_TICKER_CHARS

# Hard bounds of the contract; the configurable `max_text_chars` setting tightens them at decode.
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 100_000


def _not_blank(v: str) -> str:
    # Zero-width and control characters show nothing either: "\u200b\u200b" is no headline.
    if all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in v):
        raise ValueError("must contain visible text, not only whitespace, control or zero-width characters")
    return v


# What every supported ClickHouse stores (18.16's DateTime counts unsigned 32-bit seconds): a time
# outside would be kept as another time, or not at all.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2106, 1, 1, tzinfo=UTC)


def storable_utc(v: datetime) -> datetime:
    """``v`` in UTC, if ClickHouse can store it (ValueError otherwise)."""
    try:
        utc = v.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 has no UTC datetime
        raise ValueError("is out of range once converted to UTC") from None
    if not EARLIEST_TIME <= utc < LATEST_TIME:
        raise ValueError(f"must be from 1970-01-01 up to 2106-01-01 UTC, got {utc.isoformat()}")
    return utc


Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[\x21-\x7e]+$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_not_blank)]
ShortStr = Annotated[str, StringConstraints(min_length=1, max_length=64)]

def _storable(v: datetime) -> datetime:
    storable_utc(v)
    return v  # as sent: the offset is the producer's, and every store converts to UTC


EventTime = Annotated[AwareDatetime, AfterValidator(_storable)]
# A declared ticker must normalise (streams.tickers.normalise): one company, one ticker.
_TICKER = re.compile(DECLARED_TICKER_PATTERN)


def _ticker(v: str) -> str:
    # Checked here, not by a pattern constraint, so the dead letter says what a ticker is.
    if len(v) > MAX_TICKER_CHARS or not _TICKER.fullmatch(v):
        raise ValueError(
            f"must be a ticker such as TSLA or BRK.B: a letter, then letters or digits, then at most one "
            f"share class of 1-3 letters or digits after '.', '-' or '/'; {MAX_TICKER_CHARS} characters at most"
        )
    return v


Ticker = Annotated[
    str,
    AfterValidator(_ticker),
    WithJsonSchema({"type": "string", "pattern": DECLARED_TICKER_PATTERN, "maxLength": MAX_TICKER_CHARS}),
]


class Kind(StrEnum):
    news = "news"
    support = "support"


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class NewsItem(_Input):
    """A headline or financial post. Scored by the sentiment task."""

    id: Id
    source: ShortStr
    published_at: EventTime
    headline: Text
    body: Text | None = None
    tickers: list[Ticker] | None = Field(None, max_length=DEFAULT_MAX_TICKERS)
    url: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://")] | None = None
    lang: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")] = "en"

    @property
    def text(self) -> str:
        """What the model reads: the headline, then the body when there is one."""
        return self.headline if self.body is None else f"{self.headline}\n{self.body}"

    @property
    def event_time(self) -> datetime:
        return self.published_at


class SupportMessage(_Input):
    """A customer message to the support desk. Scored by the triage task."""

    id: Id
    channel: Literal["chat", "email", "app", "phone", "social", "web"]
    customer_id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_not_blank)]
    text: Text
    created_at: EventTime
    locale: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")] = "en"

    @property
    def event_time(self) -> datetime:
        return self.created_at


INPUT_MODELS: dict[Kind, type[NewsItem | SupportMessage]] = {
    Kind.news: NewsItem,
    Kind.support: SupportMessage,
}


class ShadowPrediction(BaseModel):
    """What a shadow challenger said about the same text in the same batch (not acted on)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_version: str
    label: str
    confidence: float = Field(ge=0, le=1)


class ScoredMessage(BaseModel):
    """One scored input, published to the scored topic and stored in ClickHouse."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id
    kind: Kind
    text: str
    model_name: str
    model_version: str
    label: str
    probs: dict[str, float]
    confidence: float = Field(ge=0, le=1)
    margin: float = Field(ge=0, le=1, description="Top-1 minus top-2 probability.")
    entropy: float = Field(ge=0)
    truncated: bool = Field(False, description="The text was longer than the model's window.")
    tickers: list[str] = Field(default_factory=list, description="News only: normalised tickers.")
    source: str = Field("", description="News source or support channel.")
    content_hash: int = Field(ge=0, description="64-bit hash of the raw payload, for duplicate-id checks.")
    event_time: datetime
    ingest_time: datetime = Field(description="Kafka record timestamp of the raw message.")
    scored_time: datetime
    src_partition: int = Field(ge=0)
    src_offset: int = Field(ge=0)
    shadow: ShadowPrediction | None = Field(
        None, description="The shadow challenger's prediction, when one runs (VIGIL_SHADOW_*_MODEL)."
    )


class DeadLetterReason(StrEnum):
    too_large = "too_large"
    bad_encoding = "bad_encoding"
    bad_json = "bad_json"
    invalid = "invalid"
    duplicate_id = "duplicate_id"
    scoring_failed = "scoring_failed"


# A dead letter goes to Kafka through the worker's producer, whose requests faust bounds at
# 1,000,000 bytes (producer_max_request_size), as brokers bound messages at about 1 MB: a letter
# over it fails its batch's commit, and the partition retries it for ever. So a letter holds at
# most this much of a message (4/3 as much in base64) and of its key; the whole message stays on
# its raw topic, where a replay reads it (tests/test_decode.py checks the largest letter fits).
MAX_LETTER_RAW_BYTES = 256 * 1024
MAX_LETTER_KEY_BYTES = 1024
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class StoredDeadLetter(BaseModel):
    """A dead letter as ClickHouse keeps it: where the message sat, its size and SHA-256, and why
    it was refused, without its bytes (the raw text stays in Kafka only; a replay reads it there)."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    source_topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key: bytes | None = None
    raw_bytes: int = Field(ge=0, description="The size of the original value.")
    raw_sha256: Sha256 = Field(description="SHA-256 (hex) of the whole original value.")
    reason: DeadLetterReason
    detail: str = Field(max_length=2000)
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class DeadLetter(StoredDeadLetter):
    """A message Vigil refused, as the dead-letter topic carries it: the stored letter and the
    original value bytes, only their start when the message is larger than a letter may be."""

    key: bytes | None = Field(
        None, max_length=MAX_LETTER_KEY_BYTES, description="The original key (its first 1,024 bytes when longer)."
    )
    raw: bytes = Field(
        max_length=MAX_LETTER_RAW_BYTES,
        description="The original value bytes (base64 in JSON): all of them, or their first 262,144 when "
        "raw_bytes is larger; the whole message stays on source_topic at partition/offset.",
    )

    @model_validator(mode="before")
    @classmethod
    def _whole_by_default(cls, data: Any) -> Any:
        # Built in Python from a whole message, its size and hash follow from its bytes.
        if isinstance(data, dict) and isinstance(raw := data.get("raw"), bytes) and "raw_bytes" not in data:
            data = {"raw_bytes": len(raw), "raw_sha256": hashlib.sha256(raw).hexdigest(), **data}
        return data

    @model_validator(mode="after")
    def _raw_is_the_start_of_the_message(self) -> DeadLetter:
        if len(self.raw) > self.raw_bytes:
            raise ValueError(f"raw holds {len(self.raw)} bytes, more than raw_bytes ({self.raw_bytes})")
        if len(self.raw) == self.raw_bytes and hashlib.sha256(self.raw).hexdigest() != self.raw_sha256:
            raise ValueError("raw holds the whole message, and raw_sha256 is not its SHA-256")
        return self


ALL_SCHEMAS: dict[str, type[BaseModel]] = {
    "NewsItem": NewsItem,
    "SupportMessage": SupportMessage,
    "ScoredMessage": ScoredMessage,
    "DeadLetter": DeadLetter,
}
