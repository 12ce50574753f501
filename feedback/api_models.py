"""Request and response bodies of the labelling API (``feedback/web.py``), and its error body."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from feedback.contracts import ItemState, SelectionReason, Task
from streams.alerting.contracts import AlertVerdict, TicketAck


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LeaseIn(_Body):
    task: Task | None = Field(None, description="Only items of this task (default: any).")


class LabelIn(_Body):
    label: str = Field(min_length=1, max_length=128)
    next_task: Task | None = Field(None, description="Task filter for the next item leased to you.")


class StepIn(_Body):
    next_task: Task | None = None


class CorrectionIn(_Body):
    task: Task
    message_id: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=8000)
    human_label: str = Field(min_length=1, max_length=128)
    model_label: str | None = Field(None, max_length=128)
    model_version: str | None = Field(None, max_length=64)


class VerdictIn(_Body):
    useful: bool
    note: str = Field("", max_length=2000)


class ItemView(BaseModel):
    item_id: str
    task: Task
    message_id: str
    text: str
    model_label: str
    confidence: float
    top: list[tuple[str, float]] = Field(description="The model's three most probable labels.")
    reasons: list[SelectionReason]
    state: ItemState
    leased_by: str | None
    lease_expires: AwareDatetime | None
    labels: list[str] = Field(description="The task's label set (registry champion card).")


class Progress(BaseModel):
    annotator: str
    task: Task | None = Field(None, description="The task the queue figures are for (the call's task filter); null: all.")
    queue: dict[str, int] = Field(
        description="Items of that task per state: open/leased live, labelled/skipped as ClickHouse held "
        "them at the last refresh, with the changes made here since."
    )
    you: dict[str, int] = Field(description="Queue items you labelled / skipped today (UTC).")


class HealthOut(BaseModel):
    queue_owner: bool = Field(description="This instance owns the labelling queue (serves the queue calls).")
    owner_url: str | None = Field(description="Where the queue's owner serves, as last announced; null: not known yet.")


class LeaseOut(BaseModel):
    item: ItemView | None
    progress: Progress


class StepOut(BaseModel):
    finished: ItemView | None = Field(description="The item this call labelled, skipped or reopened.")
    item: ItemView | None = Field(description="What to show you now (your lease), or null: queue empty.")
    correction_id: str | None = None
    progress: Progress


class QueueOut(BaseModel):
    counts: dict[str, int]
    pending: list[ItemView]


class CorrectionOut(BaseModel):
    correction_id: str


class AgreementOut(BaseModel):
    messages: int
    unanimous: int
    pairwise: float | None


class StatsOut(BaseModel):
    queue: dict[str, dict[str, int]] = Field(description="Per task, items per state (from ClickHouse).")
    annotators: dict[str, dict[str, int]] = Field(description="Per annotator: labels (all sources), skipped.")
    agreement: dict[str, AgreementOut] = Field(description="Per task, over messages with several labels.")


class VerdictOut(BaseModel):
    verdict: AlertVerdict
    corrections: int
    review_items: int


class RulePrecisionOut(BaseModel):
    rule: str
    alerts: int
    useful: int
    false: int
    unrated: int
    precision: float | None


class PrecisionOut(BaseModel):
    rules: list[RulePrecisionOut]


class AckOut(BaseModel):
    ack: TicketAck


class ErrorOut(BaseModel):
    error: str
    detail: list[dict[str, Any]] | None = None
    code: str | None = Field(None, description="Set where a client acts on the kind of error: "
                             "already_labelled (409: you labelled this item; undo it to change the label).")


def error_body(message: str, detail: list[dict[str, Any]] | None = None, code: str | None = None) -> str:
    return ErrorOut(error=message, detail=detail, code=code).model_dump_json(exclude_none=True)
