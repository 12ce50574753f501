"""The lease book: which queue item an annotator gets next, and the label/skip/undo transitions.

Pure: no Kafka, no ClickHouse, no clock of its own (every call takes ``now``). The labelling
service keeps one book in memory, feeds it the items it reads from the store, and writes every
QueueItem the book returns back to the store, so the store always holds the latest state.

Rules:
- An item is leased to at most one annotator at a time, and an annotator holds at most one lease:
  asking again returns the lease already held (a reloaded page shows the same item).
- Next item: alert, alert_review and disagreement items first, then uncertain, then audit; oldest
  (selected_at) first within a rank.
- A lease expires ``lease_s`` after it was granted; the item is then open again for anyone.
- ``undo`` reopens the annotator's most recent labelled or skipped item, within ``undo_window_s``
  of that action, and leases it back to them (the lease they held meanwhile is released).
- A call repeated after it took effect (a page retrying a call answered 503 once its change was
  saved) finds the item in the state it left it: ``finished_by`` and ``held_by`` let the caller
  answer it again instead of refusing it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from feedback.contracts import ItemState, LabelRequest, QueueItem, SelectionReason

# FeedbackStore.fetch_next reads the next open items from ClickHouse in this order too.
RANK = {
    SelectionReason.alert: 0,
    SelectionReason.alert_review: 0,
    SelectionReason.disagreement: 0,
    SelectionReason.uncertain: 1,
    SelectionReason.audit: 2,
}


class LeaseError(Exception):
    """A transition the book refuses; the message says what to do instead."""


class UnknownItem(LeaseError):
    pass


class NotLeasedToYou(LeaseError):
    pass


class LeaseExpired(LeaseError):
    pass


class NothingToUndo(LeaseError):
    pass


class AlreadyLabelled(LeaseError):
    pass


def priority(request: LabelRequest) -> int:
    """0 for alert/alert_review/disagreement, 1 uncertain, 2 audit (the best reason counts)."""
    return min(RANK[r] for r in request.reasons)


@dataclass(frozen=True, slots=True)
class Leased:
    """What ``lease`` gives: the annotator's item (None when nothing is open), and every item it
    changed, in order, for the caller to store."""

    item: QueueItem | None
    changed: list[QueueItem]


@dataclass(frozen=True, slots=True)
class _Done:
    item_id: str
    at: datetime


@dataclass
class LeaseBook:
    lease_s: float = 300.0
    undo_window_s: float = 120.0
    _items: dict[str, QueueItem] = field(default_factory=dict)
    _history: dict[str, list[_Done]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lease_s <= 0 or self.undo_window_s < 0:
            raise ValueError("lease_s must be > 0 and undo_window_s >= 0")

    # --- feeding ----------------------------------------------------------------------------------

    def merge(self, items: Iterable[QueueItem]) -> int:
        """Take items read from the store; per item the later ``updated_at`` wins (the book's own
        transitions are newer than a stale read). At the same ``updated_at`` the store's request
        wins: reasons (an alert, a review) that a request for an item still open added there, in
        a row of the same time (``FeedbackStore.write_requests``), rank the item, and each change
        the book makes writes its request back. A labelled or skipped item taken here joins its
        annotator's undo history, so undo works across a restart or a change of queue owner.
        Returns how many were new, newer or given more reasons."""
        changed = 0
        for item in items:
            held = self._items.get(item.request.item_id)
            if held is not None and item.updated_at == held.updated_at and item.request != held.request:
                self._items[item.request.item_id] = held.model_copy(update={"request": item.request})
                changed += 1
            elif held is None or item.updated_at > held.updated_at:
                self._items[item.request.item_id] = item
                changed += 1
                if item.state in (ItemState.labelled, ItemState.skipped) and item.leased_by:
                    done = self._history.setdefault(item.leased_by, [])
                    done.append(_Done(item.request.item_id, item.updated_at))
                    done.sort(key=lambda d: d.at)  # stable: the book's own order stands among equal times
        return changed

    def add(self, request: LabelRequest, now: datetime) -> QueueItem:
        """A new request, open now (re-opens an item already in the book)."""
        item = QueueItem(request=request, state=ItemState.open, updated_at=now)
        self._items[request.item_id] = item
        return item

    def keep_open(self, kept: Collection[str], now: datetime) -> int:
        """Forget the open items (lapsed leases included) not in ``kept``, the ids just read from
        the store, so that the book holds only the next items in the queue besides the leases and
        what can be undone; the store keeps the rest, and they come back as they reach the front.
        Returns how many went."""
        gone = [k for k, i in self._items.items() if k not in kept and self.effective_state(i, now) is ItemState.open]
        for k in gone:
            del self._items[k]
        return len(gone)

    def prune(self, now: datetime) -> int:
        """Forget labelled and skipped items past the undo window (the store keeps them), so a
        long-running service holds only what it can still change. Returns how many went."""
        cutoff = now - timedelta(seconds=self.undo_window_s)
        gone = [
            k for k, i in self._items.items()
            if i.state in (ItemState.labelled, ItemState.skipped) and i.updated_at < cutoff
        ]
        for k in gone:
            del self._items[k]
        for annotator, done in list(self._history.items()):
            kept = [d for d in done if d.at >= cutoff]
            if kept:
                self._history[annotator] = kept
            else:
                del self._history[annotator]
        return len(gone)

    # --- reads ------------------------------------------------------------------------------------

    def get(self, item_id: str) -> QueueItem | None:
        return self._items.get(item_id)

    def effective_state(self, item: QueueItem, now: datetime) -> ItemState:
        if item.state is ItemState.leased and self._expired(item, now):
            return ItemState.open
        return item.state

    def counts(self, now: datetime, task: str | None = None) -> dict[str, int]:
        out = {s.value: 0 for s in ItemState}
        for item in self._items.values():
            if task is None or item.request.task == task:
                out[self.effective_state(item, now).value] += 1
        return out

    def pending(self, now: datetime, task: str | None = None, limit: int = 50) -> list[QueueItem]:
        """Open items (expired leases included) in the order they would be leased."""
        found = [
            i for i in self._items.values()
            if (task is None or i.request.task == task) and self.effective_state(i, now) is ItemState.open
        ]
        found.sort(key=lambda i: (priority(i.request), i.request.selected_at, i.request.item_id))
        return found[:limit]

    def finished_by(self, item_id: str, annotator: str, state: ItemState) -> QueueItem | None:
        """The item if ``annotator`` left it in ``state`` (labelled or skipped) and the book still
        holds it (within the undo window), else None."""
        item = self._items.get(item_id)
        if item is not None and item.state is state and item.leased_by == annotator:
            return item
        return None

    def held_by(self, annotator: str, now: datetime) -> QueueItem | None:
        for item in self._items.values():
            if item.state is ItemState.leased and item.leased_by == annotator and not self._expired(item, now):
                return item
        return None

    # --- transitions ------------------------------------------------------------------------------

    def lease(self, annotator: str, now: datetime, task: str | None = None) -> Leased:
        """The annotator's lease: the one already held (renewed), else the next open item (none
        when nothing is open). A lease held on another task than ``task`` is released first."""
        held = self.held_by(annotator, now)
        if held is not None and (task is None or held.request.task == task):
            renewed = self._put(held, ItemState.leased, now, annotator)
            return Leased(renewed, [renewed])
        changed = [] if held is None else [self._put(held, ItemState.open, now, None)]
        nxt = self.pending(now, task, limit=1)
        if not nxt:
            return Leased(None, changed)
        item = self._put(nxt[0], ItemState.leased, now, annotator)
        return Leased(item, [*changed, item])

    def label(self, item_id: str, annotator: str, now: datetime) -> QueueItem:
        return self._finish(item_id, annotator, now, ItemState.labelled)

    def skip(self, item_id: str, annotator: str, now: datetime) -> QueueItem:
        return self._finish(item_id, annotator, now, ItemState.skipped)

    def undo(self, item_id: str, annotator: str, now: datetime) -> list[QueueItem]:
        """Reopen ``item_id`` for ``annotator`` if it is their latest labelled/skipped item and the
        window has not passed. Returns the changed items: the lease released (if any), then the
        item leased back to them."""
        history = self._history.get(annotator, [])
        if not history:
            raise NothingToUndo(f"{annotator} has labelled or skipped nothing that can be undone")
        last = history[-1]
        if last.item_id != item_id:
            raise NothingToUndo(
                f"only your latest labelled or skipped item can be undone, which is {last.item_id}, "
                f"not {item_id}; undo that one first"
            )
        if now - last.at > timedelta(seconds=self.undo_window_s):
            raise NothingToUndo(
                f"the undo window ({self.undo_window_s:.0f}s) for item {item_id} has passed; label it "
                "again through POST /api/corrections if it was wrong"
            )
        item = self._items[item_id]
        if item.state not in (ItemState.labelled, ItemState.skipped) or item.leased_by != annotator:
            history.pop()
            raise NothingToUndo(f"item {item_id} changed since you finished it; it cannot be undone now")
        changed = []
        held = self.held_by(annotator, now)
        if held is not None:
            changed.append(self._put(held, ItemState.open, now, None))
        history.pop()
        changed.append(self._put(item, ItemState.leased, now, annotator))
        return changed

    # --- internals --------------------------------------------------------------------------------

    def _expired(self, item: QueueItem, now: datetime) -> bool:
        return item.lease_expires is None or item.lease_expires <= now

    def _finish(self, item_id: str, annotator: str, now: datetime, state: ItemState) -> QueueItem:
        item = self.check_lease(item_id, annotator, now)
        done = self._put(item, state, now, annotator)
        self._history.setdefault(annotator, []).append(_Done(item_id, now))
        # Only the latest action matters for undo and the window is short: keep the list short.
        del self._history[annotator][:-20]
        return done

    def check_lease(self, item_id: str, annotator: str, now: datetime) -> QueueItem:
        """The item if ``annotator`` holds a live lease on it (nothing changes), else the error
        label/skip would raise: lets a caller store a label before it moves the item on."""
        item = self._items.get(item_id)
        if item is None:
            raise UnknownItem(f"no queue item {item_id}; lease one with POST /api/queue/lease")
        if item.state is not ItemState.leased or item.leased_by != annotator:
            who = f"leased to {item.leased_by}" if item.state is ItemState.leased else str(item.state)
            raise NotLeasedToYou(
                f"item {item_id} is {who}, not leased to {annotator}; lease an item with POST "
                "/api/queue/lease and label that one"
            )
        if self._expired(item, now):
            raise LeaseExpired(
                f"your lease on item {item_id} expired ({self.lease_s:.0f}s); lease again with POST "
                "/api/queue/lease (you get it back if nobody took it)"
            )
        return item

    def _put(self, item: QueueItem, state: ItemState, now: datetime, annotator: str | None) -> QueueItem:
        expires = now + timedelta(seconds=self.lease_s) if state is ItemState.leased else None
        new = QueueItem(request=item.request, state=state, leased_by=annotator, lease_expires=expires,
                        updated_at=max(now, item.updated_at))
        self._items[item.request.item_id] = new
        return new
