"""Windowed alerting state per partition of a keyed events topic, checkpointed with the offsets it
holds: sentiment on the ticker-events topic (keyed by ticker), intent spikes on the intent-events
topic (keyed by intent).

Events are re-published keyed by what is judged, so one partition's keys are judged by one worker.
Each partition owned here has its own judge (windows, baselines, cooldowns) and event clock. A
checkpoint is that state plus the last offset applied; the adapter saves it *before* acknowledging
the events behind it. After a crash or a rebalance the partition's next owner restores the
checkpoint and skips redelivered events it already holds, so every event counts once. A message
re-published after a crash upstream comes back at a new offset: the ids seen within the windows'
reach catch that.

The ids seen are most of the state (one per event within the windows' reach: half a million at
500 msg/s and the default 17 minutes) and change little between checkpoints. So a checkpoint
carries only the ids seen since the partition's last saved one, and a restore reads back those
stored with checkpoints up to its offset: writing them all every time cost a second of the event
loop and 30 MB every 5 s at that rate.
"""

from __future__ import annotations

import itertools
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from streams.alerting.clock import IdleClock
from streams.alerting.contracts import Alert, TickerEvent, TriageTicket
from streams.alerting.rules import Fed, IntentSpikeRule, RulesError, SentimentAlerter, SentimentRules, WindowConfig
from streams.alerting.triage import IntentSpikeDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SeenId:
    """A message counted under a key, kept while a copy of it could still land in a window."""

    key: str
    message_id: str
    event_time: datetime


@dataclass(frozen=True, slots=True)
class Checkpoint:
    partition: int
    offset: int  # the last offset the state holds
    state: str  # JSON, made at once: the live state goes on changing while the checkpoint is written
    new_seen: tuple[SeenId, ...] = ()  # ids counted since the partition's last saved checkpoint
    seen_end: int = 0  # how many ids the partition had counted here, in all, when this was made


class Judge(Protocol):
    """What a partition's state is: windows, baselines and cooldowns over keyed events."""

    @property
    def watermark(self) -> datetime | None: ...

    def feed_event(self, event: Any) -> Fed: ...

    def advance(self, to: datetime) -> list[Alert]: ...

    def swap_rules(self, rules: Any) -> None: ...

    def to_state(self) -> dict: ...


class Event(Protocol):
    @property
    def message_id(self) -> str: ...

    @property
    def event_time(self) -> datetime: ...


E = TypeVar("E", bound=Event)
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Resume:
    """A checkpoint with its judge rebuilt, once: a restore needs the judge's watermark to know which
    ids to read back, then the judge itself."""

    checkpoint: Checkpoint
    judge: Judge | None  # None: the rules in force cannot take the checkpoint's state
    refusal: RulesError | None = None  # why not
    # Checkpoints made before the ids were stored apart carried them all in the state.
    carried: tuple[SeenId, ...] = ()


@dataclass(slots=True)
class _Partition:
    judge: Judge
    clock: IdleClock
    offset: int = -1
    # (key, message id) -> event time, for as long as a copy could still land in a window
    seen: dict[tuple[str, str], datetime] = field(default_factory=dict)
    unsaved: list[SeenId] = field(default_factory=list)  # added to seen since the last saved checkpoint
    saved_ids: int = 0  # how many ids counted here were saved: unsaved holds the ones after them
    dirty: bool = False
    closing_step: int | None = None  # of the event time the idle timer last moved the windows to


class AlertPartitions(ABC, Generic[E, R]):
    """The partitions of one keyed events topic owned here. A subclass says what judges them."""

    name: ClassVar[str]  # in logs: "sentiment partition 3: restored at offset 41"

    def __init__(self, rules: R) -> None:
        self._rules = rules
        self._parts: dict[int, _Partition] = {}

    @abstractmethod
    def _judge(self, rules: R) -> Judge:
        ...

    @abstractmethod
    def _judge_from_state(self, rules: R, state: dict) -> Judge:
        ...

    @abstractmethod
    def _key(self, event: E) -> str:
        ...

    @abstractmethod
    def _window(self) -> WindowConfig:
        ...

    @property
    def _reach(self) -> timedelta:
        w = self._window()
        return timedelta(minutes=w.size_minutes + w.lateness_minutes)

    def owned(self, partition: int) -> bool:
        return partition in self._parts

    def resume(self, checkpoint: Checkpoint) -> Resume:
        """``checkpoint``'s judge under the rules in force, or why there is none."""
        state = json.loads(checkpoint.state)
        try:
            judge = self._judge_from_state(self._rules, state["alerter"])
        except RulesError as exc:
            return Resume(checkpoint, None, exc)
        carried = tuple(SeenId(t, m, datetime.fromisoformat(at)) for t, m, at in state.get("seen", []))
        return Resume(checkpoint, judge, carried=carried)

    def seen_since(self, resume: Resume) -> datetime | None:
        """The oldest event time whose ids a restore from ``resume`` needs (None: all of them)."""
        mark = resume.judge.watermark if resume.judge is not None else None
        return None if mark is None else mark - self._reach

    def restore(self, partition: int, resume: Resume | None, seen: Iterable[SeenId] = (),
                restored_at: float | None = None) -> None:
        """Take ownership of ``partition``, from its checkpoint when there is a usable one, with the
        ids stored with the checkpoints before it (``seen``) and those it carries itself. From
        ``restored_at`` (wall clock) on, a quiet partition's event time moves on from the
        checkpoint's watermark, as it would have had the previous owner kept it."""
        part = _Partition(self._judge(self._rules), IdleClock(self._window().idle_after_s))
        if resume is not None and resume.judge is None:
            log.warning("%s partition %d starts with fresh windows and baselines: %s", self.name, partition,
                        resume.refusal)
        elif resume is not None:
            part.judge = resume.judge
            part.offset = resume.checkpoint.offset
            ids = [*resume.carried, *seen, *resume.checkpoint.new_seen]
            part.seen = {(s.key, s.message_id): s.event_time for s in sorted(ids, key=lambda s: s.event_time)}
            self._forget_seen(part)
            if restored_at is not None and (mark := resume.judge.watermark) is not None:
                part.clock.recall(mark, restored_at)
        self._parts[partition] = part

    def revoke(self, partitions: Iterable[int]) -> None:
        """Another worker owns these now; what was not checkpointed is redelivered to it."""
        for p in partitions:
            self._parts.pop(p, None)

    def feed(self, partition: int, offset: int, event: E, wall: float) -> Fed | None:
        """None when the checkpoint already holds the event (a redelivery) or its message was
        counted for this key before (a re-publish)."""
        part = self._parts[partition]
        if offset <= part.offset:
            return None
        part.offset = offset
        part.dirty = True
        key = (self._key(event), event.message_id)
        if key in part.seen:
            return None
        part.clock.observe(event.event_time, wall)
        fed = part.judge.feed_event(event)
        if not fed.too_late:
            part.seen[key] = event.event_time
            part.unsaved.append(SeenId(key[0], key[1], event.event_time))
        return fed

    def tick(self, wall: float) -> list[Alert]:
        """Move each quiet partition's event time on with the wall clock."""
        alerts: list[Alert] = []
        for part in self._parts.values():
            if (now := part.clock.idle_now(wall)) is not None:
                alerts += part.judge.advance(now)
                # Windows close only as event time, less the lateness, enters a new step: a quiet
                # partition's state changes then, not at each tick, so only then is it saved again.
                step = self._closing_step(now)
                if step != part.closing_step:
                    part.closing_step, part.dirty = step, True
        return alerts

    def _closing_step(self, event_time: datetime) -> int:
        w = self._window()
        return int((event_time.timestamp() - w.lateness_minutes * 60) // (w.step_minutes * 60))

    def checkpoints(self) -> list[Checkpoint]:
        """The state of every partition that changed since it was last saved."""
        out = []
        for p, part in sorted(self._parts.items()):
            if part.dirty:
                self._forget_seen(part)
                state = json.dumps({"alerter": part.judge.to_state()}, separators=(",", ":"))
                out.append(Checkpoint(p, part.offset, state, tuple(part.unsaved), part.saved_ids + len(part.unsaved)))
        return out

    def saved(self, checkpoints: Iterable[Checkpoint]) -> None:
        for c in checkpoints:
            part = self._parts.get(c.partition)
            if part is None:
                continue
            # Saves may overlap (one retried while the next is made) and be confirmed in any order;
            # ids counted after this checkpoint was made stay unsaved. A checkpoint of an earlier
            # owner of the partition (revoked, then taken again) holds none of these ids.
            n = c.seen_end - part.saved_ids
            if 0 < n <= len(part.unsaved) and part.unsaved[n - 1] is c.new_seen[-1]:
                del part.unsaved[:n]
                part.saved_ids += n
            if part.offset == c.offset:
                part.dirty = False

    def swap_rules(self, rules: R) -> None:
        """New thresholds for every partition at once (geometry changes raise RulesError)."""
        for part in self._parts.values():
            part.judge.swap_rules(rules)
        self._rules = rules

    def _forget_seen(self, part: _Partition) -> None:
        # An event older than the watermark minus the windows' reach would be refused as late, so
        # its id no longer needs remembering. Ids are kept in about event-time order (the order they
        # came in), so only the head is looked at: scanning half a million ids at each checkpoint
        # would cost 0.1 s of the event loop. A late id behind a newer one goes a little later.
        if (mark := part.judge.watermark) is None:
            return
        cut = mark - self._reach
        stale = list(itertools.takewhile(lambda k: part.seen[k] < cut, part.seen))
        for key in stale:
            del part.seen[key]


class SentimentPartitions(AlertPartitions[TickerEvent, SentimentRules]):
    name = "sentiment"

    def _judge(self, rules: SentimentRules) -> Judge:
        return SentimentAlerter(rules)

    def _judge_from_state(self, rules: SentimentRules, state: dict) -> Judge:
        return SentimentAlerter.from_state(rules, state)

    def _key(self, event: TickerEvent) -> str:
        return event.ticker

    def _window(self) -> WindowConfig:
        return self._rules.window


class IntentSpikePartitions(AlertPartitions[TriageTicket, IntentSpikeRule]):
    name = "intent spike"

    def _judge(self, rules: IntentSpikeRule) -> Judge:
        return IntentSpikeDetector(rules)

    def _judge_from_state(self, rules: IntentSpikeRule, state: dict) -> Judge:
        return IntentSpikeDetector.from_state(rules, state)

    def _key(self, event: TriageTicket) -> str:
        return event.intent

    def _window(self) -> WindowConfig:
        return self._rules.window
