"""The labelling queue service behind the web handlers: stores, lease book, tokens, label sets,
the Kafka publisher, and the forwarding of queue calls to the instance that owns the queue."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from feedback.api_models import ItemView, Progress, error_body
from feedback.auth import TokenBook, tokens_path
from feedback.contracts import Correction, ItemState, QueueItem, Task
from feedback.leases import LeaseBook, Leased
from feedback.ownership import QueueOwnership
from feedback.store import FeedbackStore
from feedback.ui_metrics import UiMetrics
from models.registry import ModelNotFound, ModelRegistry
from streams.clickhouse import ClickHouseError, ClickHouseStore
from streams.settings import VigilSettings

log = logging.getLogger(__name__)

TASKS: tuple[Task, ...] = ("sentiment", "triage")
_WAITING = (ItemState.open.value, ItemState.leased.value)  # the queue's depth: items not done yet
FORWARDED_HEADER = "X-Vigil-Forwarded-By"


def retry_later(message: str) -> web.Response:
    return web.Response(status=503, text=error_body(message), content_type="application/json",
                        headers={"Retry-After": "2"})


class LabelSets:
    """Each task's labels from its registry champion's card, re-read when the champion changes."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._cache: dict[str, tuple[float | None, list[str]]] = {}

    def labels(self, task: str) -> list[str]:
        pointer = self.registry.task_dir(task) / "champion.json"
        stamp = pointer.stat().st_mtime if pointer.exists() else None
        held = self._cache.get(task)
        if held is None or held[0] != stamp:
            held = (stamp, list(self.registry.card(task).labels))
            self._cache[task] = held
        return held[1]


Publish = Callable[[str, str, bytes], Awaitable[None]]


class Service:
    """What the handlers share: stores, lease book, tokens, label sets and the Kafka publisher."""

    def __init__(
        self,
        settings: VigilSettings,
        store: ClickHouseStore,
        publish: Publish,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ownership: QueueOwnership | None = None,
    ) -> None:
        self.settings = settings
        self.ownership = ownership or QueueOwnership.sole(settings.ui_url)
        self.metrics = UiMetrics(self.ownership, self.queue_depth)
        self.store = store
        self.feedback = FeedbackStore(store)
        self.publish = publish
        self.clock = clock
        self.tokens = TokenBook(tokens_path(settings.data_dir))
        self.label_sets = LabelSets(ModelRegistry(settings.registry_dir))
        self.book = self._new_book()
        self._done_today: dict[str, tuple[date, dict[str, int]]] = {}
        self._refreshed_at: float | None = None
        self._stored: dict[str, dict[str, int]] = {}
        self._queued: dict[str, int] = {}  # per task, every item ClickHouse had at the last refresh
        self._refresh_lock = asyncio.Lock()
        # One queue change at a time: a label awaits Kafka and ClickHouse between checking the
        # lease and moving the item on, and a second call in that gap (a retried request, a lease
        # that ran out meanwhile) would still find the lease held and store a label of its own.
        self.changing = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None

    def _new_book(self) -> LeaseBook:
        return LeaseBook(lease_s=self.settings.ui_lease_s, undo_window_s=self.settings.ui_undo_window_s)

    async def io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """ClickHouse calls block (chdb in-process, or a socket): keep them off the event loop."""
        return await asyncio.to_thread(fn, *args)

    async def take_over(self) -> None:
        """Become the queue's owner: a new book, loaded from ClickHouse, where the previous owner
        wrote every lease. With ClickHouse down the book loads on the first queue call instead
        (which answers 503 until it can)."""
        self.book = self._new_book()
        self._refreshed_at = None
        # Annotators may have finished items at the previous owner: their counts are read again.
        self._done_today.clear()
        self.metrics.takeovers.inc()
        try:
            await self.refresh(force=True)
        except ClickHouseError as e:
            log.error("took the labelling queue over but could not read it from ClickHouse yet: %s", e)

    async def forward(self, request: web.Request) -> web.Response:
        """A queue call this instance cannot serve: pass it to the owner, once (a call forwarded
        to an instance that is no longer the owner is refused, not forwarded again)."""
        owner = self.ownership.owner_url
        if request.headers.get(FORWARDED_HEADER) or owner is None or owner == self.ownership.url:
            self.metrics.forwarded.labels("refused").inc()
            return retry_later(f"the labelling queue is changing hands (this instance, {self.ownership.url}, "
                                "does not own it); retry in a few seconds")
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        headers = {h: v for h in ("Authorization", "Content-Type") if (v := request.headers.get(h)) is not None}
        try:
            async with self._http.request(request.method, owner + request.path_qs, data=await request.read(),
                                          headers={**headers, FORWARDED_HEADER: self.ownership.url}) as r:
                retry = {"Retry-After": r.headers["Retry-After"]} if "Retry-After" in r.headers else None
                self.metrics.forwarded.labels("answered").inc()
                return web.Response(status=r.status, body=await r.read(), content_type=r.content_type, headers=retry)
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("queue call %s %s not forwarded to the owner %s: %s", request.method, request.path, owner, e)
            self.metrics.forwarded.labels("unreachable").inc()
            return retry_later(f"the labelling queue's owner at {owner} did not answer ({type(e).__name__}); if it "
                                "has stopped, another instance takes the queue over within "
                                f"{self.settings.ui_owner_session_timeout_ms / 1000:.0f}s; retry then")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def refresh(self, *, force: bool = False) -> None:
        """Load into the book, from ClickHouse, every live lease, every item that can still be
        undone, and per task the next ``ui_queue_window`` items in the order they are leased (new
        requests arrive there); the book forgets the open items that are no longer among them.
        Holding a window, not the whole queue, keeps the owner's memory and each refresh's read
        bounded when annotators fall behind (an item is 2-6 KB in memory; a backlog can reach a
        million items)."""
        async with self._refresh_lock:
            due = self._refreshed_at is None or time.monotonic() - self._refreshed_at >= self.settings.ui_queue_refresh_s
            if not (force or due):
                return
            now = self.clock()
            undoable_since = now - timedelta(seconds=self.settings.ui_undo_window_s)
            held, window, stored = await self.io(lambda: (
                self.feedback.fetch_held(now, undoable_since),
                [i for t in TASKS for i in self.feedback.fetch_next(t, now, self.settings.ui_queue_window)],
                {t: self.feedback.queue_stats(t) for t in TASKS},
            ))
            self.book.merge(held + window)
            now = self.clock()
            self.book.keep_open({i.request.item_id for i in held + window}, now)
            self.book.prune(now)
            self._stored = stored
            self._queued = {t: sum(c.values()) for t, c in stored.items()}
            self._refreshed_at = time.monotonic()

    def counts(self, now: datetime, task: str | None = None) -> dict[str, int]:
        """Leased from the book (live: it holds every lease); labelled and skipped from ClickHouse
        as of the last refresh, followed since by ``count``; open is what remains of all the items
        ClickHouse had then, since the book holds only the next few."""
        out = self.book.counts(now, task)
        for state in (ItemState.labelled.value, ItemState.skipped.value):
            out[state] = sum(c.get(state, 0) for t, c in self._stored.items() if task in (None, t))
        queued = sum(n for t, n in self._queued.items() if task in (None, t))
        out[ItemState.open.value] = max(0, queued - out[ItemState.leased.value] - out[ItemState.labelled.value]
                                        - out[ItemState.skipped.value])
        return out

    def queue_depth(self) -> dict[str, dict[str, int]]:
        """Per task, the open and leased items, on the queue's owner (the others hold no book)."""
        if not self.ownership.owns:
            return {}
        now = self.clock()
        return {task: {s: n for s, n in self.counts(now, task).items() if s in _WAITING} for task in TASKS}

    def labels(self, task: str) -> list[str]:
        try:
            return self.label_sets.labels(task)
        except ModelNotFound as e:
            raise web.HTTPServiceUnavailable(
                text=error_body(f"no label set for task {task}: {e}"), content_type="application/json"
            ) from None

    def view(self, item: QueueItem | None) -> ItemView | None:
        if item is None:
            return None
        r = item.request
        top = sorted(r.probs.items(), key=lambda kv: -kv[1])[:3]
        return ItemView(
            item_id=r.item_id, task=r.task, message_id=r.message_id, text=r.text, model_label=r.model_label,
            confidence=r.confidence, top=top, reasons=r.reasons, state=item.state, leased_by=item.leased_by,
            lease_expires=item.lease_expires, labels=self.labels(r.task),
        )

    async def progress(self, annotator: str, now: datetime, task: str | None = None) -> Progress:
        """The queue's figures for ``task`` (the page's task filter; all tasks when None) and the
        annotator's own for the day."""
        return Progress(annotator=annotator, task=task, queue=self.counts(now, task),
                        you=dict(await self._today(annotator, now)))

    async def count(self, annotator: str, task: str, what: str, now: datetime, delta: int = 1) -> None:
        """Count an item the annotator just finished (or, -1, took back), after it was saved: in
        their figures for the day, and in the queue's labelled/skipped, which ClickHouse gives only
        at a refresh (the page showed the figures of up to ui_queue_refresh_s before). A refresh
        that read the store between this item's save and this call counts it twice until the
        next refresh; only a concurrent GET /api/queue can do that, the changes run one at a time."""
        stored = self._stored.setdefault(task, {})
        stored[what] = max(0, stored.get(what, 0) + delta)
        day = now.date()
        held = self._done_today.get(annotator)
        if held is None or held[0] != day:
            await self._today(annotator, now)  # read from ClickHouse, this item included
            return
        held[1][what] = max(0, held[1][what] + delta)

    async def _today(self, annotator: str, now: datetime) -> dict[str, int]:
        # Read once per annotator and day, then counted here: the counts survive a restart or a
        # change of queue owner, at one query per annotator.
        day = now.date()
        held = self._done_today.get(annotator)
        if held is None or held[0] != day:
            midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
            held = (day, await self.io(self.feedback.finished_by, annotator, midnight))
            self._done_today[annotator] = held
        return held[1]

    async def save(self, items: Sequence[QueueItem]) -> None:
        await self.io(self.feedback.write_items, list(items))

    async def correct(self, corrections: Sequence[Correction]) -> None:
        """Corrections topic first (awaited), then the feedback table."""
        for c in corrections:
            await self.publish(self.settings.topic_corrections, c.message_id, c.model_dump_json().encode())
        await self.io(self.feedback.write_corrections, list(corrections))

    async def lease_next(self, annotator: str, now: datetime, task: str | None) -> QueueItem | None:
        await self.refresh()
        leased = self.book.lease(annotator, now, task)
        if leased.item is None and self.counts(now, task)[ItemState.open.value] > 0:
            # Every open item of the book's window is leased, but ClickHouse had more: read the
            # next ones now rather than answer "nothing to label" until the next refresh.
            await self.refresh(force=True)
            again = self.book.lease(annotator, now, task)
            leased = Leased(again.item, leased.changed + again.changed)
        if leased.changed:
            await self.save(leased.changed)
        return leased.item
