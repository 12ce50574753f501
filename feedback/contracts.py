"""Messages of the feedback loop: label candidates, label requests (queue items), corrections,
model events.

Each crosses a Kafka topic and a ClickHouse table, so each is a pydantic model that forbids
unknown fields. Texts here are the stored texts (support text already PII-masked).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from streams.contracts import Id, ScoredMessage

Task = Literal["sentiment", "triage"]

# Item ids are uuid5 of (task, message id, model version): a replayed scored message selects the
# same item, and stores de-duplicate on it.
_ITEM_NAMESPACE = uuid.UUID("3b0e3c52-5f0c-4d0b-8f0e-2b9a0c1e7d44")


class SelectionReason(StrEnum):
    uncertain = "uncertain"  # low margin or high entropy for its task
    disagreement = "disagreement"  # champion and shadow challenger differ
    audit = "audit"  # random audit sample: unbiased accuracy estimates
    alert = "alert"  # contributed to an alert
    alert_review = "alert_review"  # its alert was judged false: the label needs a person


class LabelCandidate(BaseModel):
    """A scored message that may need a label (it has a selection reason, or contributed to an
    alert), on its way to the selector that owns its text's fingerprint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: ScoredMessage
    alert_id: str | None = None


class ItemState(StrEnum):
    open = "open"
    leased = "leased"
    labelled = "labelled"
    skipped = "skipped"


class LabelRequest(BaseModel):
    """One message a person should label, as the selection policy chose it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: str
    task: Task
    message_id: Id
    text: str
    model_name: str
    model_version: str
    model_label: str
    probs: dict[str, float]
    confidence: float = Field(ge=0, le=1)
    margin: float = Field(ge=0, le=1)
    entropy: float = Field(ge=0)
    reasons: list[SelectionReason] = Field(min_length=1)
    challenger_label: str | None = None
    alert_id: str | None = None
    event_time: AwareDatetime
    selected_at: AwareDatetime

    @staticmethod
    def make_id(task: str, message_id: str, model_version: str) -> str:
        return str(uuid.uuid5(_ITEM_NAMESPACE, f"{task}|{message_id}|{model_version}"))


class QueueItem(BaseModel):
    """A label request with its place in the queue; every state change is stored as a new row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request: LabelRequest
    state: ItemState
    leased_by: str | None = None
    lease_expires: AwareDatetime | None = None
    updated_at: AwareDatetime


class CorrectionSource(StrEnum):
    queue = "queue"  # an annotator labelled a queue item
    implicit = "implicit"  # e.g. a support agent re-routed a ticket
    alert_verdict = "alert_verdict"  # a useful alert confirmed its messages' labels


class Correction(BaseModel):
    """A human label for one message. The latest per (task, message_id, annotator) counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    correction_id: str
    task: Task
    message_id: Id
    item_id: str | None = Field(None, description="The queue item, when the label came from the queue.")
    text: str = Field(min_length=1, max_length=100_000)
    annotator: str = Field(min_length=1, max_length=128)
    human_label: str
    model_label: str | None = None
    model_version: str | None = None
    source: CorrectionSource
    created_at: AwareDatetime
    withdrawn: bool = Field(False, description="The annotator took this label back (undo): it counts nowhere.")

    def withdrawal(self, at: datetime) -> Correction:
        """This label taken back: the correction's next version, which replaces it."""
        return self.model_copy(update={"withdrawn": True, "created_at": at})

    @staticmethod
    def make_id(task: str, message_id: str, annotator: str) -> str:
        return str(uuid.uuid5(_ITEM_NAMESPACE, f"correction|{task}|{message_id}|{annotator}"))


class ModelEventKind(StrEnum):
    drift = "drift"
    # a drift event that no longer stands: the audit labels behind it were withdrawn (its id ties it to
    # that event: ModelEvent.withdrawal_id)
    drift_withdrawn = "drift_withdrawn"
    retrain_started = "retrain_started"
    retrain_failed = "retrain_failed"  # a started round ended without a verdict: the detail says why
    gate_refused = "gate_refused"
    promoted = "promoted"  # the model-updated event workers hot swap on
    rolled_back = "rolled_back"
    swapped = "swapped"  # a worker now scores with the version
    # a worker started scoring with the version (the champion, the one it fell back to, or its pinned one)
    started = "started"
    # a worker would not score with the champion: it failed to load or its self test
    champion_refused = "champion_refused"


class ModelEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    kind: ModelEventKind
    task: Task
    model_version: str
    detail: str = Field("", max_length=4000)
    figures: dict[str, float] = Field(default_factory=dict)
    created_at: AwareDatetime

    @staticmethod
    def round_end_id(started_id: str) -> str:
        """The event id of the end (promoted, gate_refused or retrain_failed) of the retrain round whose
        retrain_started event is ``started_id``: it ties a round's two events together without a
        column, and whoever records the end (the round, or the worker that saw its process die) writes
        the same id."""
        return str(uuid.uuid5(_ITEM_NAMESPACE, f"round-end|{started_id}"))

    @staticmethod
    def withdrawal_id(drift_id: str) -> str:
        """The event id of the drift_withdrawn event that takes back the drift event ``drift_id``."""
        return str(uuid.uuid5(_ITEM_NAMESPACE, f"drift-withdrawn|{drift_id}"))


class QueueOwnerAnnouncement(BaseModel):
    """A labelling-service instance took the queue over and serves it here (the owner topic)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    at: AwareDatetime


FEEDBACK_SCHEMAS: dict[str, type[BaseModel]] = {
    "LabelCandidate": LabelCandidate,
    "LabelRequest": LabelRequest,
    "QueueItem": QueueItem,
    "Correction": Correction,
    "ModelEvent": ModelEvent,
    "QueueOwnerAnnouncement": QueueOwnerAnnouncement,
}
