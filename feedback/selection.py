"""Which scored messages a person should label: the selection policy, a pure core.

A message is a candidate for any of these reasons, all recorded on its request:
- ``uncertain``: margin below, or entropy above, its task's threshold;
- ``disagreement``: a shadow challenger labelled it differently;
- ``audit``: a random sample at ``audit_rate``, drawn from a hash of (task, message id) so a replay
  draws the same messages and the draw knows nothing about the text or the score (unbiased);
- ``alert``: it contributed to an alert.

Audit draws have a budget of their own (``audit_budget_per_hour``), apart from the rest: when
uncertain messages spent the hour's budget in its first minutes, as they do on busy streams, the
audit got nothing, and accuracy went unmeasured exactly when traffic was heaviest. The audit budget
is paced through the event-time hour (by the end of minute m, at most ceil(budget * (m + 1) / 60)),
so the sample spreads over the hour instead of being its first draws. A draw past it is queued (or
dropped) for its other reasons alone, and without the audit reason: it is not part of the sample.
Audit items are exempt from near-duplicate collapse (skipping texts seen before would under-count
them in the accuracy the audit estimates) and from class balance (it would bias the sample).

A message selected before (the alerts agent proposes an uncertain message the scored agent proposed
already; a redelivery after a crash) is requested again, so the store merges its new reasons and
alert id into the one item, and charged to no budget: each item is charged once (the ids selected in
the kept hours are remembered, as the budgets bound them).

Every other candidate then passes, in order:
1. near-duplicate collapse: texts equal after normalising case, digits, URLs, cashtags,
   punctuation and whitespace are queued once (the fingerprints of the last ``dedup_memory``
   selected texts per task are remembered). Alert contributors are exempt: an alert's evidence is
   labelled even when it repeats a text already queued.
2. the per-hour budget of the task, counted in event-time hours, which nothing exceeds;
3. class balance: within an hour, no predicted label takes more than ``max_class_share`` of the
   budget. Alert contributors are exempt (balancing would hide an alert's evidence), but they
   count towards the shares.

A selector that sees only part of the stream (a worker reading some of the label-candidates topic's
n partitions) keeps its partitions' shares of each hour's budgets (``see_share``): each partition
gets budget // n, and the first budget % n one more, so the workers together keep the task's budgets
exactly and a budget smaller than n still reaches some of them. The audit budget's pace is split the
same way minute by minute, so the partitions together keep the task's pace. That topic is keyed by
``fingerprint``, so every copy of a text comes to one selector. State is in memory and bounded; a
fresh selector fed the same messages decides the same way. A restarted one takes what was queued
from its own partitions before it as its history (``remember``), so it neither spends an hour's
budget again nor queues a text again; after a rebalance a running one does the same (``forget``,
then ``remember``). Only its own partitions' items count: taking a share of every partition's
spending instead forgot what a busy partition spent at each rebalance, and it kept selecting.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from feedback.contracts import LabelRequest, SelectionReason, Task
from streams.contracts import Kind, ScoredMessage
from streams.pii import mask_pii
from streams.settings import VigilSettings

TASK_OF_KIND: dict[Kind, Task] = {Kind.news: "sentiment", Kind.support: "triage"}

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_CASHTAG = re.compile(r"\$[A-Za-z][A-Za-z0-9.\-]{0,9}\b")
_DIGITS = re.compile(r"\d+")
# Everything but letters, and the symbols people write sentiment with (arrows, emoji): "earnings
# tomorrow 📈" and "earnings tomorrow 📉" are not the same text.
_NOT_WORD = re.compile(r"(?:[^\w\u2190-\u21ff\u2300-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]|_)+")


class TaskPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    margin_below: float = Field(ge=0, le=1, description="Uncertain when top-1 minus top-2 is below this.")
    entropy_above: float = Field(ge=0, description="Uncertain when the entropy (nats) is above this.")
    budget_per_hour: int = Field(120, ge=0, description="Most requests per event-time hour.")
    max_class_share: float = Field(
        0.5, gt=0, le=1, description="Most of an hour's budget one predicted label may take."
    )
    audit_budget_per_hour: int = Field(
        12, ge=0, description="Most audit requests per event-time hour, paced through the hour; apart from the "
        "budget of the other requests.",
    )

    def caps(self, owned: Collection[int] = (0,), total: int = 1) -> Caps:
        """The hourly caps of a selector that sees partitions ``owned`` of ``total`` equal shares
        of the stream."""
        budget = _share_of(self.budget_per_hour, owned, total)
        return Caps(budget, max(1, math.ceil(budget * self.max_class_share)))

    def audit_cap(self, t: datetime, owned: Collection[int] = (0,), total: int = 1) -> int:
        """How many audit items of ``t``'s hour the partitions ``owned`` of ``total`` may have taken
        by the end of ``t``'s minute: their share of the task's pace. Pacing each share on its
        own rounded every one up: n partitions took n items in minute 0, and 4 of them spent the hour's
        audit budget of 12 by minute 40 (the sample missed the rest of the hour)."""
        return _share_of(paced(self.audit_budget_per_hour, t), owned, total)


class Caps(NamedTuple):
    budget: int
    per_label: int


def _share_of(budget: int, owned: Collection[int], total: int) -> int:
    # Largest remainder: with budget 3 over 4 workers of one partition each, a share of
    # budget * 1 // 4 gave every one of them 0.
    whole, rest = divmod(budget, total)
    return sum(whole + (p < rest) for p in owned)


def paced(budget: int, t: datetime) -> int:
    """How much of an hour's ``budget`` may be spent by the end of ``t``'s minute."""
    return math.ceil(budget * (t.minute + 1) / 60)


class SelectionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: dict[Task, TaskPolicy] = Field(default_factory=lambda: {
        # Three classes: entropy is at most ln 3 = 1.10 nats.
        "sentiment": TaskPolicy(margin_below=0.2, entropy_above=0.9),
        # 77 intents: at most ln 77 = 4.34 nats.
        "triage": TaskPolicy(margin_below=0.1, entropy_above=2.0),
    })
    audit_rate: float = Field(0.01, ge=0, le=1)
    audit_salt: str = Field("vigil-audit", description="Change it to draw a different audit sample.")
    dedup_memory: int = Field(50_000, ge=1, description="Selected-text fingerprints remembered per task.")
    hours_kept: int = Field(
        72, ge=1, description="Budget counters kept per task; events older than the newest hour minus "
        "this are too late to select (their hour's count is gone).",
    )


def policy_from_settings(settings: VigilSettings) -> SelectionPolicy:
    def task(margin_below: float, entropy_above: float) -> TaskPolicy:
        return TaskPolicy(
            margin_below=margin_below, entropy_above=entropy_above,
            budget_per_hour=settings.feedback_budget_per_hour, max_class_share=settings.feedback_max_class_share,
            audit_budget_per_hour=settings.feedback_audit_budget_per_hour,
        )

    return SelectionPolicy(
        tasks={
            "sentiment": task(settings.feedback_sentiment_margin_below, settings.feedback_sentiment_entropy_above),
            "triage": task(settings.feedback_triage_margin_below, settings.feedback_triage_entropy_above),
        },
        audit_rate=settings.feedback_audit_rate,
        dedup_memory=settings.feedback_dedup_memory,
    )


class PastSelection(NamedTuple):
    """An item queued before this selector started, as the label queue holds it."""

    task: str
    event_time: datetime
    label: str
    text: str
    audit: bool
    item_id: str


class DropReason(StrEnum):
    duplicate = "duplicate"
    budget = "budget"
    class_balance = "class_balance"
    late = "late"
    audit_budget = "audit_budget"


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one message: the request when selected; otherwise its reasons
    (possibly none) and why it was dropped."""

    message_id: str
    task: Task
    reasons: tuple[SelectionReason, ...]
    request: LabelRequest | None = None
    dropped: DropReason | None = None

    @property
    def selected(self) -> bool:
        return self.request is not None


def normalise_text(text: str) -> str:
    """The text as near-duplicate collapse compares it."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = _URL.sub(" ", t)
    t = _CASHTAG.sub(" ", t)
    t = _DIGITS.sub(" ", t)
    t = _NOT_WORD.sub(" ", t)
    return " ".join(t.split())


def fingerprint(text: str) -> bytes:
    # Texts that normalise to nothing (a bare link) are compared as they are.
    key = normalise_text(text) or text
    return hashlib.blake2b(key.encode("utf-8"), digest_size=12).digest()


def audit_draw(salt: str, task: str, message_id: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, task, message id)."""
    digest = hashlib.sha256(f"{salt}|{task}|{message_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def as_utc(t: datetime) -> datetime:
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


def hour_of(t: datetime) -> datetime:
    return as_utc(t).replace(minute=0, second=0, microsecond=0)


class _HourCounts:
    """Selections per event-time hour for one task (audit items; the others in total and per
    predicted label; the items selected, each charged once), bounded."""

    def __init__(self, hours_kept: int) -> None:
        self._hours_kept = hours_kept
        self._totals: dict[datetime, int] = {}
        self._by_label: dict[datetime, dict[str, int]] = {}
        self._audits: dict[datetime, int] = {}
        # item id -> whether it is in the audit sample; no more per hour than the hour's budgets
        self._items: dict[datetime, dict[str, bool]] = {}
        self._newest: datetime | None = None

    def too_late(self, hour: datetime) -> bool:
        return self._newest is not None and hour <= self._newest - timedelta(hours=self._hours_kept)

    def total(self, hour: datetime) -> int:
        return self._totals.get(hour, 0)

    def of_label(self, hour: datetime, label: str) -> int:
        return self._by_label.get(hour, {}).get(label, 0)

    def audits(self, hour: datetime) -> int:
        return self._audits.get(hour, 0)

    def audited(self, hour: datetime, item_id: str) -> bool | None:
        """Whether the item selected before is in the audit sample; None when it was not selected."""
        return self._items.get(hour, {}).get(item_id)

    def add(self, hour: datetime, label: str, item_id: str) -> None:
        self._totals[hour] = self._totals.get(hour, 0) + 1
        labels = self._by_label.setdefault(hour, {})
        labels[label] = labels.get(label, 0) + 1
        self._items.setdefault(hour, {})[item_id] = False
        self._saw(hour)

    def add_audit(self, hour: datetime, item_id: str) -> None:
        self._audits[hour] = self._audits.get(hour, 0) + 1
        self._items.setdefault(hour, {})[item_id] = True
        self._saw(hour)

    def _saw(self, hour: datetime) -> None:
        if self._newest is None or hour > self._newest:
            self._newest = hour
            horizon = hour - timedelta(hours=self._hours_kept)
            for counts in (self._totals, self._by_label, self._audits, self._items):
                for old in [h for h in counts if h <= horizon]:
                    del counts[old]


class Selector:
    """Feed scored messages in stream order; ``decide`` returns what to queue. Not thread-safe."""

    def __init__(self, policy: SelectionPolicy) -> None:
        self.policy = policy
        self._share: tuple[tuple[int, ...], int] = ((0,), 1)
        self._seen: dict[str, OrderedDict[bytes, None]] = {}
        self._counts: dict[str, _HourCounts] = {}

    def see_share(self, owned: Iterable[int], total: int) -> None:
        """From now on this selector sees partitions ``owned`` of the stream's ``total``."""
        parts = tuple(sorted(set(owned)))
        if total < 1 or any(not 0 <= p < total for p in parts):
            raise ValueError(f"a share is partitions of 0..{total - 1} (total >= 1), got {list(parts)} of {total}")
        self._share = (parts, total)

    def forget(self) -> None:
        """Drop the remembered texts and hour counts (keeping the share), as after a rebalance: the
        texts this selector now owns were another's, so its history is read again (``remember``)."""
        self._seen.clear()
        self._counts.clear()

    def remember(self, past: Iterable[PastSelection], partition_of: Callable[[bytes, int], int] | None = None) -> int:
        """Take items queued before this selector started (oldest first) as its history, those of
        its own partitions only (set the share first): their texts' fingerprints and their counts
        towards the hour's budgets. ``partition_of(key, partitions)`` is the label-candidates
        topic's partitioner, the partition a text fingerprint key goes to; a selector of the whole
        stream needs none. Returns how many items it took."""
        owned, total = self._share
        if partition_of is None and total > 1:
            raise ValueError("a selector of part of the stream needs partition_of to tell its own items")
        wanted = frozenset(owned)
        taken = 0
        for item in past:
            print_ = fingerprint(item.text)
            # Another partition's items are spent from its budgets, and its texts never come here.
            if partition_of is not None and partition_of(print_, total) not in wanted:
                continue
            counts = self._counts.setdefault(item.task, _HourCounts(self.policy.hours_kept))
            if item.audit:
                counts.add_audit(hour_of(item.event_time), item.item_id)
            else:
                counts.add(hour_of(item.event_time), item.label, item.item_id)
            self._remember_text(item.task, print_)
            taken += 1
        return taken

    def _remember_text(self, task: str, print_: bytes) -> None:
        seen = self._seen.setdefault(task, OrderedDict())
        seen[print_] = None
        seen.move_to_end(print_)
        while len(seen) > self.policy.dedup_memory:
            seen.popitem(last=False)

    def reasons(
        self, msg: ScoredMessage, *, challenger_label: str | None = None, alert: bool = False
    ) -> tuple[SelectionReason, ...]:
        task = TASK_OF_KIND[msg.kind]
        rules = self.policy.tasks[task]
        found = []
        if alert:
            found.append(SelectionReason.alert)
        if audit_draw(self.policy.audit_salt, task, msg.id) < self.policy.audit_rate:
            found.append(SelectionReason.audit)
        if msg.margin < rules.margin_below or msg.entropy > rules.entropy_above:
            found.append(SelectionReason.uncertain)
        if challenger_label is not None and challenger_label != msg.label:
            found.append(SelectionReason.disagreement)
        return tuple(found)

    def decide(
        self,
        msg: ScoredMessage,
        now: datetime,
        *,
        challenger_label: str | None = None,
        alert_id: str | None = None,
    ) -> Decision:
        """``now`` is the selection time recorded on the request; every other input is the message."""
        task = TASK_OF_KIND[msg.kind]
        reasons = self.reasons(msg, challenger_label=challenger_label, alert=alert_id is not None)
        if not reasons:
            return Decision(msg.id, task, reasons)
        counts = self._counts.setdefault(task, _HourCounts(self.policy.hours_kept))
        hour = hour_of(msg.event_time)
        if counts.too_late(hour):
            return Decision(msg.id, task, reasons, dropped=DropReason.late)
        rules = self.policy.tasks[task]
        caps = rules.caps(*self._share)
        print_ = fingerprint(msg.text)
        item_id = LabelRequest.make_id(task, msg.id, msg.model_version)

        audited = counts.audited(hour, item_id)
        if audited is not None:
            # Selected before (the scored agent's copy of an alert's contributor, or a redelivery):
            # the store merges it into that item, so it is requested again for what it adds (an
            # alert id, a reason) and charged nothing. It is in the audit sample only if it was then.
            if not audited:
                reasons = tuple(r for r in reasons if r is not SelectionReason.audit)
            if not reasons:
                return Decision(msg.id, task, reasons, dropped=DropReason.audit_budget)
            return self._selected(msg, task, reasons, print_, now, challenger_label, alert_id)

        if SelectionReason.audit in reasons:
            if counts.audits(hour) < rules.audit_cap(as_utc(msg.event_time), *self._share):
                counts.add_audit(hour, item_id)
                return self._selected(msg, task, reasons, print_, now, challenger_label, alert_id)
            reasons = tuple(r for r in reasons if r is not SelectionReason.audit)
            if not reasons:
                return Decision(msg.id, task, reasons, dropped=DropReason.audit_budget)

        alert = SelectionReason.alert in reasons
        seen = self._seen.setdefault(task, OrderedDict())
        dropped = None
        if print_ in seen and not alert:
            seen.move_to_end(print_)
            dropped = DropReason.duplicate
        elif counts.total(hour) >= caps.budget:
            dropped = DropReason.budget
        elif not alert and counts.of_label(hour, msg.label) >= caps.per_label:
            dropped = DropReason.class_balance
        if dropped is not None:
            return Decision(msg.id, task, reasons, dropped=dropped)
        counts.add(hour, msg.label, item_id)
        return self._selected(msg, task, reasons, print_, now, challenger_label, alert_id)

    def _selected(
        self, msg: ScoredMessage, task: Task, reasons: tuple[SelectionReason, ...], print_: bytes,
        now: datetime, challenger_label: str | None, alert_id: str | None,
    ) -> Decision:
        self._remember_text(task, print_)
        return Decision(msg.id, task, reasons, request=to_request(msg, task, reasons, now, challenger_label, alert_id))


def to_request(
    msg: ScoredMessage,
    task: Task,
    reasons: tuple[SelectionReason, ...],
    now: datetime,
    challenger_label: str | None = None,
    alert_id: str | None = None,
) -> LabelRequest:
    # Support text is masked by the scoring pipeline already; masking again is a no-op there and
    # keeps the label queue free of PII whatever produced the scored record.
    text = mask_pii(msg.text).text if msg.kind is Kind.support else msg.text
    return LabelRequest(
        item_id=LabelRequest.make_id(task, msg.id, msg.model_version), task=task, message_id=msg.id,
        text=text, model_name=msg.model_name, model_version=msg.model_version, model_label=msg.label,
        probs=dict(msg.probs), confidence=msg.confidence, margin=msg.margin, entropy=msg.entropy,
        reasons=list(reasons), challenger_label=challenger_label, alert_id=alert_id,
        event_time=as_utc(msg.event_time), selected_at=as_utc(now),
    )
