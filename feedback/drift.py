"""Drift monitors, a pure core on river's detectors. Each turns a change into a ModelEvent(kind=drift)
whose detail says in words what moved, by how much, and what to look at.

- Audited error rate: ADWIN on 1/0 (the model's label was wrong/right) for items a person labelled
  from the random audit sample, the only labels that estimate accuracy without bias.
- Confidence: ADWIN on each scored message's confidence (needs no labels; river's ADWIN costs
  well under a microsecond an update).
- Label mix: ADWIN per predicted label on its share in consecutive blocks of scored messages (needs
  no labels). Blocks keep the cost at one update per label per block, not per message, which
  matters with 77 intents.

The figures in an event are the two means ADWIN found different: the part of its window it
dropped and the part it kept. The kept part can still hold some pre-change data, so the "after"
figure understates a change at first.
Monitors belong to one (task, model version): a new model starts fresh, so a hot swap is not
mistaken for drift. The last few versions seen keep theirs: after a promotion, audit labels of the
old version go on arriving among the new one's for hours. After an event a monitor keeps quiet for
``cooldown`` observations, so one shift gives one event rather than one per adjustment of the window.
An event is dated when it was found (the retrain trigger counts events since its last round); the
detail says the event time of the observation that completed it.
A restarted worker warms its monitors with the history it lost (``warm_scored``, ``warm_audit``):
replayed like live observations but without events, which were reported when they happened.
An audit label can be withdrawn after it was counted (the annotator's undo): the error monitor keeps
the labels it counted (the newest ``error_kept``) and is rebuilt from them without it, so its state
holds only labels that still stand. An error event raised since that label, whose change the rebuilt
monitor does not find, is taken back by a drift_withdrawn event: it stays recorded, but the retrain
trigger no longer counts it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from river.drift import ADWIN

from feedback.contracts import Correction, ModelEvent, ModelEventKind, QueueItem, SelectionReason, Task


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    error_delta: float = Field(0.002, gt=0, lt=1, description="ADWIN confidence for the audited error rate.")
    confidence_delta: float = Field(0.002, gt=0, lt=1, description="ADWIN confidence for the mean confidence.")
    label_mix_delta: float = Field(0.002, gt=0, lt=1, description="ADWIN confidence per label share.")
    block: int = Field(50, ge=1, description="Scored messages per label-mix observation.")
    min_label_share: float = Field(
        0.02, ge=0, le=1, description="Label-mix changes between shares both below this are not reported."
    )
    error_cooldown: int = Field(50, ge=0, description="Audited labels the error monitor stays quiet after an event.")
    confidence_cooldown: int = Field(
        2000, ge=0, description="Scored messages the confidence monitor stays quiet after an event."
    )
    label_mix_cooldown: int = Field(40, ge=0, description="Blocks a label's monitor stays quiet after an event.")
    error_kept: int = Field(
        5000, ge=1, description="Audit labels (the newest) the error monitor keeps, to rebuild itself from "
        "without one that is withdrawn (its window then starts at the oldest kept, as after a warm start).")


@dataclass
class _Watched:
    """One ADWIN with its cooldown."""

    delta: float
    cooldown: int
    detector: ADWIN = field(init=False)
    quiet: int = 0

    def __post_init__(self) -> None:
        self.detector = ADWIN(delta=self.delta)

    def update(self, x: float) -> tuple[float, float, int] | None:
        """Feed x; on a change, (mean of the part ADWIN dropped, mean of the part it kept, how
        many observations it dropped)."""
        total = self.detector.estimation * self.detector.width + x
        width = self.detector.width + 1
        self.detector.update(x)
        if self.quiet:
            self.quiet -= 1
            return None
        kept = self.detector.width
        if not self.detector.drift_detected or kept >= width:
            return None
        self.quiet = self.cooldown
        after = self.detector.estimation
        return (total - after * kept) / (width - kept), after, int(width - kept)


@dataclass(frozen=True, slots=True)
class _AuditLabel:
    """An audit label the error monitor counted: ``seq`` is its place in the count, ``label_id`` the
    correction's id (None: a label that cannot be withdrawn)."""

    seq: int
    label_id: str | None
    wrong: bool


def _rose(event: ModelEvent) -> bool:
    return event.figures["error_rate_after"] > event.figures["error_rate_before"]


class _TaskMonitors:
    def __init__(self, task: Task, model_version: str, config: DriftConfig, clock: Callable[[], datetime]) -> None:
        self.task = task
        self.model_version = model_version
        self.config = config
        self.clock = clock
        self.error = _Watched(config.error_delta, config.error_cooldown)
        self.confidence = _Watched(config.confidence_delta, config.confidence_cooldown)
        self.shares: dict[str, _Watched] = {}
        self._block_labels: Counter[str] = Counter()
        self._block_size = 0
        self.blocks = 0
        # What a withdrawal needs: the labels the error monitor counted, and the events it raised, by
        # the place in the count of the label that completed each.
        self._audit_labels: deque[_AuditLabel] = deque(maxlen=config.error_kept)
        self._raised: list[tuple[int, ModelEvent]] = []
        self._seq = 0

    def _event(self, detail: str, when: datetime, **figures: float) -> ModelEvent:
        return ModelEvent(
            kind=ModelEventKind.drift, task=self.task, model_version=self.model_version,
            detail=f"{detail} (seen at event time {when.isoformat()})"[:4000], figures=figures, created_at=self.clock(),
        )

    def count(self, wrong: bool, label_id: str | None) -> tuple[float, float, int] | None:
        """Feed an audit label to the error monitor and keep it; the change it completes, if any."""
        self._seq += 1
        self._audit_labels.append(_AuditLabel(self._seq, label_id, wrong))
        while self._raised and self._raised[0][0] < self._audit_labels[0].seq:
            self._raised.pop(0)  # its labels are no longer kept: no withdrawal can reach it
        return self.error.update(1.0 if wrong else 0.0)

    def audited(self, wrong: bool, when: datetime, label_id: str | None = None) -> list[ModelEvent]:
        change = self.count(wrong, label_id)
        if change is None:
            return []
        before, after, n = change
        verb = "rose" if after > before else "fell"
        advice = (
            "the model is making more mistakes on today's traffic: review recent corrections and retrain"
            if after > before else "the model is doing better than before; nothing to do"
        )
        event = self._event(
            f"{self.task} model {self.model_version}: the audited error rate {verb} from {before:.1%} to "
            f"{after:.1%} (ADWIN; {n} audited labels before the change); {advice}.",
            when, error_rate_before=before, error_rate_after=after, audited_before=float(n),
        )
        self._raised.append((self._seq, event))
        return [event]

    def withdraw(self, label_id: str, when: datetime) -> list[ModelEvent]:
        """Take a counted audit label out (withdrawn at ``when``): the error monitor is rebuilt from
        the labels it kept, without it, and without events (as a warm start). An event raised since
        that label stands if the rebuilt monitor also finds a change that way (up or down) since then,
        at whichever label; each other one gets a drift_withdrawn event. Nothing when the label is not
        among those kept (never counted, or too old)."""
        gone = next((c for c in self._audit_labels if c.label_id == label_id), None)
        if gone is None:
            return []
        self._audit_labels.remove(gone)
        self.error = _Watched(self.config.error_delta, self.config.error_cooldown)
        found = set()
        for c in self._audit_labels:
            change = self.error.update(1.0 if c.wrong else 0.0)
            if change is not None and c.seq > gone.seq:
                found.add(change[1] > change[0])
        raised, self._raised, taken_back = self._raised, [], []
        for seq, e in raised:
            if seq < gone.seq or _rose(e) in found:
                self._raised.append((seq, e))
            else:
                taken_back.append(e)
        return [ModelEvent(
            event_id=ModelEvent.withdrawal_id(e.event_id), kind=ModelEventKind.drift_withdrawn, task=self.task,
            model_version=self.model_version, created_at=self.clock(),
            detail=(f"{self.task} model {self.model_version}: drift event {e.event_id} no longer stands: an audit "
                    f"label behind it was withdrawn at {when.isoformat()}, and without it the audited error rate "
                    "shows no such change. It no longer counts towards a retrain."),
        ) for e in taken_back]

    def scored(self, label: str, confidence: float, when: datetime) -> list[ModelEvent]:
        events = []
        change = self.confidence.update(confidence)
        if change is not None:
            before, after, dropped = change
            verb = "fell" if after < before else "rose"
            events.append(self._event(
                f"{self.task} model {self.model_version}: mean confidence {verb} from {before:.2f} to "
                f"{after:.2f} (ADWIN; {dropped} messages before the change); the incoming text may "
                "have changed (new sources, topics or wording). Look at recent low-confidence messages.",
                when, confidence_before=before, confidence_after=after, messages_before=float(dropped),
            ))
        self._block_labels[label] += 1
        self._block_size += 1
        if self._block_size < self.config.block:
            return events
        n, counts = self._block_size, self._block_labels
        self._block_labels, self._block_size = Counter(), 0
        self.blocks += 1
        for lbl in sorted(set(self.shares) | set(counts)):
            watched = self.shares.get(lbl)
            if watched is None:
                # A label first seen now had share 0 in the blocks before: start its history there.
                watched = self.shares[lbl] = _Watched(self.config.label_mix_delta, self.config.label_mix_cooldown)
                for _ in range(self.blocks - 1):
                    watched.update(0.0)
            change = watched.update(counts[lbl] / n)
            if change is None:
                continue
            before, after, width = change
            if max(before, after) < self.config.min_label_share:
                continue
            verb = "rose" if after > before else "fell"
            events.append(self._event(
                f"{self.task} model {self.model_version}: the share of messages labelled {lbl!r} {verb} "
                f"from {before:.1%} to {after:.1%} (ADWIN; {width * n} messages before the change). "
                "Either the world changed (check the news or the support queues) or the model did not "
                "keep up with the text; an audit of recent items tells which.",
                when, share_before=before, share_after=after, messages_before=float(width * n),
            ))
        return events


def signals_worsening(event: ModelEvent) -> bool:
    """Whether a drift event calls for a retrain: the audited error rate rose, the confidence fell,
    or the label mix moved (either way: the world changed, or the model fell behind the text). A
    falling error rate or a rising confidence means the model does better: nothing to retrain for.
    An event without the figures these monitors record counts, as every event did before."""
    f = event.figures
    if "error_rate_before" in f and "error_rate_after" in f:
        return f["error_rate_after"] > f["error_rate_before"]
    if "confidence_before" in f and "confidence_after" in f:
        return f["confidence_after"] < f["confidence_before"]
    return True


def audit_error(correction: Correction, item: QueueItem | None) -> bool | None:
    """Whether the model was wrong on an audit-sample item, by this correction; None when the
    correction is not about an audit item (other selections are biased towards hard cases)."""
    if item is None or SelectionReason.audit not in item.request.reasons:
        return None
    return correction.human_label != item.request.model_label


class CountedLabels:
    """The labels already counted, by correction id, the most recent ``capacity`` kept: repeats
    arrive within seconds of the first, so a bounded memory catches them."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._labels: OrderedDict[str, str] = OrderedDict()

    def first_time(self, correction: Correction) -> bool:
        """True unless this correction arrived before with the same label; remembers it."""
        key = correction.correction_id
        repeat = self._labels.get(key) == correction.human_label
        self._labels[key] = correction.human_label
        self._labels.move_to_end(key)
        if len(self._labels) > self._capacity:
            self._labels.popitem(last=False)
        return not repeat

    def forget(self, correction: Correction) -> None:
        """The label was withdrawn: the same label given again (undo, then relabel) counts anew."""
        self._labels.pop(correction.correction_id, None)


VERSIONS_KEPT = 3  # per task and kind of monitor


class DriftMonitor:
    """Per task, the monitors of the model versions last seen. Not thread-safe. ``clock`` dates
    the events."""

    def __init__(self, config: DriftConfig | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config = config or DriftConfig()
        self.clock = clock
        # Audit labels arrive hours after scoring, often for an older version than the stream now
        # shows, so the two kinds of monitor follow their model versions separately.
        self._scored: OrderedDict[tuple[str, str], _TaskMonitors] = OrderedDict()
        self._audited: OrderedDict[tuple[str, str], _TaskMonitors] = OrderedDict()
        self._counted = CountedLabels()

    def _for(self, monitors: OrderedDict[tuple[str, str], _TaskMonitors], task: Task,
             model_version: str) -> _TaskMonitors:
        current = monitors.get((task, model_version))
        if current is None:
            return self._fresh(monitors, task, model_version)
        monitors.move_to_end((task, model_version))
        return current

    def _fresh(self, monitors: OrderedDict[tuple[str, str], _TaskMonitors], task: Task,
               model_version: str) -> _TaskMonitors:
        """New monitors for the version, in place of any it had; the task's least recently seen
        version beyond VERSIONS_KEPT goes."""
        monitors.pop((task, model_version), None)
        monitors[(task, model_version)] = fresh = _TaskMonitors(task, model_version, self.config, self.clock)
        for old in [key for key in monitors if key[0] == task][:-VERSIONS_KEPT]:
            del monitors[old]
        return fresh

    def observe_scored(
        self, task: Task, model_version: str, label: str, confidence: float, when: datetime
    ) -> list[ModelEvent]:
        """One scored message (event time ``when``); events when a block completes a change."""
        return self._for(self._scored, task, model_version).scored(label, confidence, when)

    def observe_audit(self, task: Task, model_version: str, wrong: bool, when: datetime) -> list[ModelEvent]:
        """A person's label for an audit-sample item: ``wrong`` when it differs from the model's."""
        return self._for(self._audited, task, model_version).audited(wrong, when)

    def observe_correction(self, correction: Correction, item: QueueItem | None) -> list[ModelEvent]:
        """A correction off the corrections topic: counted when it labels an audit item, and only
        the first time that label arrives (a call or a producer retried publishes it again). A
        withdrawal takes the label out again (``_TaskMonitors.withdraw``): its drift_withdrawn events."""
        wrong = audit_error(correction, item)
        if item is None or wrong is None:
            return []
        key = (item.request.task, item.request.model_version)
        if correction.withdrawn:
            self._counted.forget(correction)
            monitors = self._audited.get(key)
            return [] if monitors is None else monitors.withdraw(correction.correction_id, correction.created_at)
        if not self._counted.first_time(correction):
            return []
        return self._for(self._audited, *key).audited(wrong, correction.created_at, correction.correction_id)

    def warm_scored(
        self, task: Task, model_version: str, history: Iterable[tuple[str, float, datetime]]
    ) -> int:
        """Start ``task``'s scored monitors for ``model_version`` from ``history`` ((label,
        confidence, event time), oldest first), replacing what they held; returns how many were
        replayed. No events: the windows, label-mix blocks and cooldowns end as live observation
        would have left them, so a change under way is found at the same point as without a restart."""
        monitors = self._fresh(self._scored, task, model_version)
        replayed = 0
        for label, confidence, when in history:
            monitors.scored(label, confidence, when)
            replayed += 1
        return replayed

    def warm_audit(
        self, task: Task, model_version: str, history: Iterable[tuple[Correction, QueueItem]]
    ) -> int:
        """Start ``task``'s audited-error monitor for ``model_version`` from ``history`` (corrections
        with their items, oldest first), replacing what it held, as ``warm_scored`` does; only
        corrections of that version's audit items count. Returns how many were replayed."""
        monitors = self._fresh(self._audited, task, model_version)
        replayed = 0
        for correction, item in history:
            wrong = audit_error(correction, item)
            if wrong is None or item.request.model_version != model_version:
                continue
            monitors.count(wrong, correction.correction_id)
            self._counted.first_time(correction)
            replayed += 1
        return replayed
