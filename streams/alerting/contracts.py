"""What the alerting core emits: alerts, and responders' verdicts on them."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

# Alert ids are uuid5 of what the alert is about, so a replay (or a worker restarted on the same
# input) produces the same ids and downstream stores can de-duplicate on them.
_ALERT_NAMESPACE = uuid.UUID("6f1d7c1e-6d38-4d38-9a0c-7d1f6c9e4a21")


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.info: 0, Severity.warning: 1, Severity.critical: 2}


# An alert names its messages by id (the feedback loop reads them from ClickHouse); the text is for
# a glance. Whole texts made an alert's size grow with the text limit: at 30,000 characters, ten
# contributors passed the producer's 1 MB and the alert could never be published.
CONTRIBUTOR_TEXT_CHARS = 500


class ContributingMessage(BaseModel):
    """One message behind an alert, enough for a person to see why at a glance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    text: str = Field(description=f"The text, its first {CONTRIBUTOR_TEXT_CHARS} characters and '…' when longer.")
    label: str
    score: float = Field(description="Sentiment: p_pos - p_neg. Triage: the intent's confidence.")

    @field_validator("text")
    @classmethod
    def _glance(cls, text: str) -> str:
        return text if len(text) <= CONTRIBUTOR_TEXT_CHARS else text[: CONTRIBUTOR_TEXT_CHARS - 1] + "…"


class TickerEvent(BaseModel):
    """One scored news message as one of its tickers sees it. News is re-published keyed by
    ticker, so every ticker's windows and baseline live in exactly one worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ticker: str
    message_id: str
    event_time: AwareDatetime
    label: str
    score: float = Field(description="p_pos - p_neg")
    text: str
    model_version: str = ""


class Alert(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: Literal["sentiment", "triage"]
    rule: str
    severity: Severity
    ticker: str | None = None
    intent: str | None = None
    queue: str | None = None
    window_start: AwareDatetime | None = None
    window_end: AwareDatetime | None = None
    figures: dict[str, float] = Field(default_factory=dict)
    model_version: str = ""
    top_messages: list[ContributingMessage] = Field(default_factory=list)
    created_at: AwareDatetime = Field(description="Event time at which the alert fired (never wall clock).")

    @model_validator(mode="after")
    def _subject(self) -> Alert:
        if self.kind == "sentiment" and not self.ticker:
            raise ValueError("a sentiment alert must name its ticker")
        if self.kind == "triage" and not (self.intent or self.queue):
            raise ValueError("a triage alert must name its intent or queue")
        return self

    @staticmethod
    def make_id(*parts: object) -> str:
        return str(uuid.uuid5(_ALERT_NAMESPACE, "|".join(str(p) for p in parts)))


class AlertVerdict(BaseModel):
    """A responder's judgement of one alert; the latest verdict per alert is the one that counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alert_id: str = Field(min_length=1)
    useful: bool
    by: str = Field(min_length=1, max_length=128)
    at: AwareDatetime
    note: str = Field("", max_length=2000)


class TicketAck(BaseModel):
    """A support ticket picked up by a person: stops its SLA clock. Arrives on the acks topic
    (from the API or any other tool)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: str = Field(min_length=1, max_length=128)
    by: str = Field(min_length=1, max_length=128)
    at: AwareDatetime


# Not a valid mapping queue name (those are [a-z][a-z0-9_]*), so it can never clash with one.
HUMAN_TRIAGE = "human-triage"


class TriageTicket(BaseModel):
    """One routed support message, as published to its queue's topic and stored in ``triage``.
    The text is the scored message's, so PII is already masked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: str
    text: str
    intent: str
    confidence: float
    queue: str  # HUMAN_TRIAGE when the model was not confident enough
    priority: Literal["P1", "P2", "P3", "P4"]  # the predicted intent's, even in human triage: urgent guesses sort first
    sla_minutes: int
    due_at: AwareDatetime
    human_triage: bool
    routed_queue: str  # the mapping's queue for the predicted intent
    model_version: str
    event_time: AwareDatetime
    # The scored-topic partition it was routed from; whichever worker owns that partition runs the
    # ticket's SLA clock, and restores it from ClickHouse after a restart or rebalance. -1: unknown.
    source_partition: int = -1


def sla_breach_id(message_id: str) -> str:
    """The id of the one escalation alert a ticket can raise."""
    return Alert.make_id("triage", "sla_breach", message_id)


def as_aware(t: datetime) -> datetime:
    """Event times must be timezone-aware: naive ones would silently compare as local time."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"event time {t.isoformat()} has no timezone; send UTC times with an offset")
    return t
