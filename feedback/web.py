"""The labelling service: an aiohttp app with the labelling page (``/``) and its JSON API.

Every ``/api`` call needs ``Authorization: Bearer <token>`` (``vigil annotators add NAME``).
Queue state lives in a LeaseBook in the memory of the instance that owns the queue, fed from
ClickHouse (label_queue) and written back on every change. Several instances may run: one owns the
queue (``feedback.election``) and the others forward the queue calls to it, serving everything
else themselves. Every correction is published to the corrections topic (awaited) and then
written to the feedback table.

Endpoints (request and response bodies are the pydantic models below):
  GET  /health                         no token: this instance's queue role and the owner's URL
  GET  /metrics                        no token: Prometheus metrics (queue owner, take-overs, forwarding)
  GET  /api/queue                      queue depth per state and the next open items
  POST /api/queue/lease                your leased item (the one you hold, else the next)
  POST /api/items/{id}/label|skip|undo finish or reopen an item; the reply carries your next item
  POST /api/corrections                programmatic/implicit labels (e.g. a re-routed ticket)
  GET  /api/stats                      queue, per-annotator counts, inter-annotator agreement
  POST /api/alerts/{id}/verdict        a responder's verdict; becomes corrections or review items
  GET  /api/alerts/precision           alert precision per rule
  POST /api/tickets/{message_id}/ack   publishes a TicketAck (stops the ticket's SLA clock)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from feedback.agreement import agreement, labels_per_annotator
from feedback.auth import TokenBook, tokens_path
from feedback.contracts import (
    Correction,
    CorrectionSource,
    ItemState,
    LabelRequest,
    QueueItem,
    SelectionReason,
    Task,
)
from feedback.election import run_election
from feedback.leases import (
    AlreadyLabelled,
    LeaseBook,
    LeaseError,
    UnknownItem,
)
from feedback.ownership import NotQueueOwner, OwnershipUnconfirmed, QueueOwnership
from feedback.store import FeedbackStore
from feedback.ui_metrics import UiMetrics
from models.registry import ModelNotFound, ModelRegistry
from streams.alerting.contracts import Alert, AlertVerdict, TicketAck
from streams.alerting.precision import label_suggestions, rule_precision
from streams.clickhouse import ClickHouseError, ClickHouseStore
from streams.contracts import Kind
from streams.settings import VigilSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
TASKS: tuple[Task, ...] = ("sentiment", "triage")
_KIND_BY_TASK = {"sentiment": Kind.news, "triage": Kind.support}
M = TypeVar("M", bound=BaseModel)


# --- request and response bodies ---------------------------------------------------------------


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
    queue: dict[str, int] = Field(
        description="Items per state: open/leased live, labelled/skipped as ClickHouse held them at the "
        "last refresh (at most ui_queue_refresh_s old, on a lease)."
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


# --- the parts the handlers need ---------------------------------------------------------------


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
        self.metrics = UiMetrics(self.ownership)
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
        self._refresh_lock = asyncio.Lock()
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
        if request.headers.get(_FORWARDED) or owner is None or owner == self.ownership.url:
            self.metrics.forwarded.labels("refused").inc()
            return _retry_later(f"the labelling queue is changing hands (this instance, {self.ownership.url}, "
                                "does not own it); retry in a few seconds")
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        headers = {h: v for h in ("Authorization", "Content-Type") if (v := request.headers.get(h)) is not None}
        try:
            async with self._http.request(request.method, owner + request.path_qs, data=await request.read(),
                                          headers={**headers, _FORWARDED: self.ownership.url}) as r:
                retry = {"Retry-After": r.headers["Retry-After"]} if "Retry-After" in r.headers else None
                self.metrics.forwarded.labels("answered").inc()
                return web.Response(status=r.status, body=await r.read(), content_type=r.content_type, headers=retry)
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("queue call %s %s not forwarded to the owner %s: %s", request.method, request.path, owner, e)
            self.metrics.forwarded.labels("unreachable").inc()
            return _retry_later(f"the labelling queue's owner at {owner} did not answer ({type(e).__name__}); if it "
                                "has stopped, another instance takes the queue over within "
                                f"{self.settings.ui_owner_session_timeout_ms / 1000:.0f}s; retry then")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def refresh(self, *, force: bool = False) -> None:
        """Merge open, leased and still undoable items from ClickHouse into the book (new requests
        arrive there)."""
        async with self._refresh_lock:
            due = self._refreshed_at is None or time.monotonic() - self._refreshed_at >= self.settings.ui_queue_refresh_s
            if not (force or due):
                return
            undoable_since = self.clock() - timedelta(seconds=self.settings.ui_undo_window_s)
            items, stored = await self.io(lambda: (
                self.feedback.fetch_items(states={ItemState.open, ItemState.leased}, or_updated_since=undoable_since,
                                          limit=10_000),
                {t: self.feedback.queue_stats(t) for t in TASKS},
            ))
            self.book.merge(items)
            self.book.prune(self.clock())
            self._stored = stored
            self._refreshed_at = time.monotonic()

    def counts(self, now: datetime, task: str | None = None) -> dict[str, int]:
        """Open and leased from the book (live); labelled and skipped from ClickHouse as of the
        last refresh (the book forgets finished items once they can no longer be undone)."""
        live = self.book.counts(now, task)
        done = [ItemState.labelled.value, ItemState.skipped.value]
        for state in done:
            live[state] = sum(c.get(state, 0) for t, c in self._stored.items() if task in (None, t))
        return live

    def labels(self, task: str) -> list[str]:
        try:
            return self.label_sets.labels(task)
        except ModelNotFound as e:
            raise web.HTTPServiceUnavailable(
                text=_error(f"no label set for task {task}: {e}"), content_type="application/json"
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

    async def progress(self, annotator: str, now: datetime) -> Progress:
        return Progress(annotator=annotator, queue=self.counts(now), you=dict(await self._today(annotator, now)))

    async def count(self, annotator: str, what: str, now: datetime, delta: int = 1) -> None:
        """Count an item the annotator just finished (or, -1, took back), after it was saved."""
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
        item = self.book.lease(annotator, now, task)
        if item is not None:
            await self.save([item])
        return item


# --- plumbing ----------------------------------------------------------------------------------

_FORWARDED = "X-Vigil-Forwarded-By"


def _retry_later(message: str) -> web.Response:
    return web.Response(status=503, text=_error(message), content_type="application/json",
                        headers={"Retry-After": "2"})


SERVICE = web.AppKey("service", Service)
ANNOTATOR = web.RequestKey("annotator", str)


def _error(message: str, detail: list[dict[str, Any]] | None = None) -> str:
    return ErrorOut(error=message, detail=detail).model_dump_json(exclude_none=True)


def _reply(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


async def _body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()  # over client_max_size: aiohttp answers 413
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as e:
        detail = [{"loc": list(err["loc"]), "msg": err["msg"]} for err in e.errors()]
        raise web.HTTPUnprocessableEntity(
            text=_error(f"the body is not a valid {model.__name__}", detail), content_type="application/json"
        ) from None


def _unprocessable(message: str) -> web.HTTPUnprocessableEntity:
    return web.HTTPUnprocessableEntity(text=_error(message), content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _queue_call(handler: Handler, *, changes: bool = True) -> Handler:
    """A call on the lease book: the queue's owner serves it, another instance forwards it there.
    During a hand-over it waits for the new owner (up to ui_handover_wait_s); a forwarded call
    does not wait here, its sender does (it would hold up this instance's stop). A call that
    ``changes`` the queue is served only once the election confirms the ownership, and answered
    only once it confirms it again after the write (503 otherwise, the change saved)."""

    async def run(request: web.Request) -> web.Response:
        svc = request.app[SERVICE]
        if not svc.ownership.owns and not request.headers.get(_FORWARDED):
            await svc.ownership.decided(svc.settings.ui_handover_wait_s)
        try:
            async with svc.ownership.serving(changes=changes):
                return await handler(request)
        except OwnershipUnconfirmed as e:
            svc.metrics.unconfirmed.inc()
            return _retry_later(f"{e}; retry in a few seconds")
        except NotQueueOwner:
            return await svc.forward(request)

    return run


def _queue_read(handler: Handler) -> Handler:
    return _queue_call(handler, changes=False)


def _annotator(request: web.Request) -> str:
    return request[ANNOTATOR]


@web.middleware
async def _auth_and_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    if request.path.startswith("/api/"):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        who = request.app[SERVICE].tokens.check(token.strip()) if scheme.lower() == "bearer" else None
        if who is None:
            return web.Response(
                status=401, content_type="application/json", headers={"WWW-Authenticate": 'Bearer realm="vigil"'},
                text=_error("send Authorization: Bearer <token>; an admin creates one with `vigil annotators add NAME`"),
            )
        request[ANNOTATOR] = who
    try:
        return await handler(request)
    except UnknownItem as e:
        return web.Response(status=404, text=_error(str(e)), content_type="application/json")
    except LeaseError as e:
        return web.Response(status=409, text=_error(str(e)), content_type="application/json")
    except ClickHouseError as e:
        log.error("ClickHouse failed during %s %s: %s", request.method, request.path, e)
        return web.Response(status=503, text=_error(f"storage unavailable, retry later: {e}"),
                            content_type="application/json")
    except KafkaError as e:
        log.error("Kafka failed during %s %s: %s", request.method, request.path, e)
        return web.Response(status=503, text=_error(f"Kafka unavailable, retry later: {e}"),
                            content_type="application/json")


# --- handlers ----------------------------------------------------------------------------------


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[SERVICE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def health(request: web.Request) -> web.Response:
    own = request.app[SERVICE].ownership
    return _reply(HealthOut(queue_owner=own.owns, owner_url=own.owner_url))


@_queue_read
async def get_queue(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    task = request.query.get("task")
    if task is not None and task not in TASKS:
        raise _unprocessable(f"task must be one of {', '.join(TASKS)}")
    await svc.refresh(force=True)
    now = svc.clock()
    pending = [svc.view(i) for i in svc.book.pending(now, task, limit=20)]
    return _reply(QueueOut(counts=svc.counts(now, task), pending=[p for p in pending if p]))


@_queue_call
async def lease(request: web.Request) -> web.Response:
    svc, who = request.app[SERVICE], _annotator(request)
    body = await _body(request, LeaseIn)
    now = svc.clock()
    item = await svc.lease_next(who, now, body.task)
    return _reply(LeaseOut(item=svc.view(item), progress=await svc.progress(who, now)))


def _known_item(svc: Service, item_id: str) -> QueueItem:
    item = svc.book.get(item_id)
    if item is None:
        raise UnknownItem(f"no queue item {item_id}; lease one with POST /api/queue/lease")
    return item


@_queue_call
async def label(request: web.Request) -> web.Response:
    svc, who = request.app[SERVICE], _annotator(request)
    body = await _body(request, LabelIn)
    now = svc.clock()
    item = _known_item(svc, request.match_info["item_id"])
    labels = svc.labels(item.request.task)
    if body.label not in labels:
        raise _unprocessable(f"{body.label!r} is not a {item.request.task} label; use one of: {', '.join(labels)}")
    if (done := svc.book.finished_by(item.request.item_id, who, ItemState.labelled)) is not None:
        return await _label_repeated(svc, who, done, body, now)
    # The label is stored before the item moves on: if Kafka or ClickHouse fails, the lease stays
    # and the annotator can send it again.
    r = svc.book.check_lease(item.request.item_id, who, now).request
    correction = Correction(
        correction_id=Correction.make_id(r.task, r.message_id, who), task=r.task, message_id=r.message_id,
        item_id=r.item_id, text=r.text, annotator=who, human_label=body.label, model_label=r.model_label,
        model_version=r.model_version, source=CorrectionSource.queue, created_at=now,
    )
    # An earlier attempt may have stored this very label and been cut off before the item moved on
    # (its owner died between the two writes, or a paused owner wrote it after this one loaded the
    # queue): the item is finished without publishing the label a second time.
    if await _stored_label(svc, correction.correction_id) != body.label:
        await svc.correct([correction])
    done = svc.book.label(r.item_id, who, now)
    await svc.save([done])
    await svc.count(who, "labelled", now)
    return await _step(svc, who, now, body.next_task, done, correction.correction_id)


async def _label_repeated(svc: Service, who: str, done: QueueItem, body: LabelIn, now: datetime) -> web.Response:
    """The same label again for an item this annotator labelled: the page retrying a call that was
    answered 503 after its label was saved. It is answered as it was the first time, and neither
    published, stored nor counted again (drift would see the audit label twice). A different label
    is refused: undo is how a label is changed."""
    r = done.request
    correction_id = Correction.make_id(r.task, r.message_id, who)
    stored = await _stored_label(svc, correction_id)
    if stored != body.label:
        was = f" as {stored}" if stored is not None else ""
        raise AlreadyLabelled(
            f"you labelled item {r.item_id}{was} already; to change it, undo it with POST "
            f"/api/items/{r.item_id}/undo and label it again"
        )
    return await _step(svc, who, now, body.next_task, done, correction_id)


async def _stored_label(svc: Service, correction_id: str) -> str | None:
    """The label the feedback table holds for this correction id, None when it holds none."""
    saved = await svc.io(svc.feedback.fetch_correction, correction_id)
    return saved.human_label if saved is not None else None


async def _step(svc: Service, who: str, now: datetime, next_task: str | None, finished: QueueItem,
                correction_id: str | None = None) -> web.Response:
    """Answer a finished item with the annotator's next lease (the one they hold, on a repeat)."""
    nxt = await svc.lease_next(who, now, next_task)
    return _reply(StepOut(finished=svc.view(finished), item=svc.view(nxt), correction_id=correction_id,
                          progress=await svc.progress(who, now)))


@_queue_call
async def skip(request: web.Request) -> web.Response:
    svc, who = request.app[SERVICE], _annotator(request)
    body = await _body(request, StepIn)
    now = svc.clock()
    item_id = request.match_info["item_id"]
    # A repeat of a skip that took effect is answered again, not refused (see _label_repeated).
    done = svc.book.finished_by(item_id, who, ItemState.skipped)
    if done is None:
        done = svc.book.skip(item_id, who, now)
        await svc.save([done])
        await svc.count(who, "skipped", now)
    return await _step(svc, who, now, body.next_task, done)


@_queue_call
async def undo(request: web.Request) -> web.Response:
    svc, who = request.app[SERVICE], _annotator(request)
    await _body(request, StepIn)
    now = svc.clock()
    item_id = request.match_info["item_id"]
    reopened = svc.book.held_by(who, now)
    # Already back with this annotator: a repeat of an undo that took effect is answered again.
    if reopened is None or reopened.request.item_id != item_id:
        before = svc.book.get(item_id)
        changed = svc.book.undo(item_id, who, now)
        await svc.save(changed)
        if before is not None:
            await svc.count(who, "labelled" if before.state is ItemState.labelled else "skipped", now, -1)
        reopened = changed[-1]
    return _reply(StepOut(finished=svc.view(reopened), item=svc.view(reopened), progress=await svc.progress(who, now)))


async def post_correction(request: web.Request) -> web.Response:
    svc, who = request.app[SERVICE], _annotator(request)
    body = await _body(request, CorrectionIn)
    labels = svc.labels(body.task)
    if body.human_label not in labels:
        raise _unprocessable(f"{body.human_label!r} is not a {body.task} label; use one of: {', '.join(labels)}")
    correction = Correction(
        correction_id=Correction.make_id(body.task, body.message_id, who), task=body.task,
        message_id=body.message_id, text=body.text, annotator=who, human_label=body.human_label,
        model_label=body.model_label, model_version=body.model_version, source=CorrectionSource.implicit,
        created_at=svc.clock(),
    )
    await svc.correct([correction])
    return _reply(CorrectionOut(correction_id=correction.correction_id), status=201)


async def stats(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]

    def read() -> StatsOut:
        queue = {t: svc.feedback.queue_stats(t) for t in TASKS}
        corrections = {t: svc.feedback.fetch_corrections(t) for t in TASKS}
        skipped = svc.feedback.fetch_items(states={ItemState.skipped}, limit=1_000_000)
        annotators: dict[str, dict[str, int]] = {}
        for name, n in labels_per_annotator(c for cs in corrections.values() for c in cs).items():
            annotators.setdefault(name, {"labels": 0, "skipped": 0})["labels"] = n
        for item in skipped:
            if item.leased_by:
                annotators.setdefault(item.leased_by, {"labels": 0, "skipped": 0})["skipped"] += 1
        agree = {}
        for t, cs in corrections.items():
            a = agreement(cs)
            agree[t] = AgreementOut(messages=a.messages, unanimous=a.unanimous, pairwise=a.pairwise)
        return StatsOut(queue=queue, annotators=dict(sorted(annotators.items())), agreement=agree)

    return _reply(await svc.io(read))


def _review_request(alert: Alert, message_id: str, text: str, label: str, scored: dict[str, Any], now: datetime) -> LabelRequest:
    """A review item for one message behind a false alert, with the model's figures when the scored
    row is still in ClickHouse."""
    task: Task = alert.kind
    s = scored.get(message_id)
    version = s.model_version if s is not None else alert.model_version
    return LabelRequest(
        item_id=LabelRequest.make_id(task, message_id, version), task=task, message_id=message_id, text=text,
        model_name=s.model_name if s is not None else "", model_version=version, model_label=label,
        probs=dict(s.probs) if s is not None else {}, confidence=s.confidence if s is not None else 0.0,
        margin=s.margin if s is not None else 0.0, entropy=s.entropy if s is not None else 0.0,
        reasons=[SelectionReason.alert_review], alert_id=alert.id,
        event_time=s.event_time if s is not None else alert.created_at, selected_at=now,
    )


async def verdict(request: web.Request) -> web.Response:
    svc, who = request.app[SERVICE], _annotator(request)
    body = await _body(request, VerdictIn)
    alert_id = request.match_info["alert_id"]
    alert = await svc.io(svc.store.fetch_alert, alert_id)
    if alert is None:
        raise web.HTTPNotFound(text=_error(f"no alert {alert_id} in ClickHouse"), content_type="application/json")
    now = svc.clock()
    v = AlertVerdict(alert_id=alert.id, useful=body.useful, by=who, at=now, note=body.note)
    await svc.io(svc.store.write_verdicts, [v])
    suggestions = label_suggestions(alert, v)
    confirmed = [
        Correction(
            correction_id=Correction.make_id(alert.kind, s.message_id, who), task=alert.kind,
            message_id=s.message_id, text=s.text, annotator=who, human_label=s.label, model_label=s.label,
            model_version=alert.model_version or None, source=CorrectionSource.alert_verdict, created_at=now,
        )
        for s in suggestions if s.action == "confirm"
    ]
    if confirmed:
        await svc.correct(confirmed)
    review = [s for s in suggestions if s.action == "review"]
    requests: list[LabelRequest] = []
    if review:
        rows = await svc.io(svc.store.fetch_scored, _KIND_BY_TASK[alert.kind], [s.message_id for s in review])
        scored = {m.id: m for m in rows if not alert.model_version or m.model_version == alert.model_version}
        requests = [_review_request(alert, s.message_id, s.text, s.label, scored, now) for s in review]
        for r in requests:
            await svc.publish(svc.settings.topic_label_requests, r.message_id, r.model_dump_json().encode())
        await svc.io(svc.feedback.write_requests, requests)
        # The owner's book takes them at once (write_requests leaves items someone already handled as
        # they are); a standby leaves them to the owner's next refresh.
        if svc.ownership.owns:
            await svc.refresh(force=True)
    return _reply(VerdictOut(verdict=v, corrections=len(confirmed), review_items=len(requests)), status=201)


async def precision(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]

    def read() -> PrecisionOut:
        alerts = svc.store.fetch_alerts()
        table = rule_precision(alerts, svc.store.fetch_verdicts([a.id for a in alerts]))
        return PrecisionOut(rules=[
            RulePrecisionOut(rule=p.rule, alerts=p.alerts, useful=p.useful, false=p.false, unrated=p.unrated,
                             precision=p.precision)
            for p in table.values()
        ])

    return _reply(await svc.io(read))


async def ack(request: web.Request) -> web.Response:
    svc, who = request.app[SERVICE], _annotator(request)
    await _body(request, StepIn)
    try:
        a = TicketAck(message_id=request.match_info["message_id"], by=who, at=svc.clock())
    except ValidationError as e:
        raise _unprocessable(f"bad ticket id: {e.errors()[0]['msg']}") from None
    await svc.publish(svc.settings.topic_ticket_acks, a.message_id, a.model_dump_json().encode())
    return _reply(AckOut(ack=a), status=202)


# --- the app -----------------------------------------------------------------------------------


def build_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[_auth_and_errors], client_max_size=service.settings.ui_max_body_bytes)
    app[SERVICE] = service
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", STATIC_DIR, append_version=True)
    app.router.add_get("/api/queue", get_queue)
    app.router.add_post("/api/queue/lease", lease)
    app.router.add_post("/api/items/{item_id}/label", label)
    app.router.add_post("/api/items/{item_id}/skip", skip)
    app.router.add_post("/api/items/{item_id}/undo", undo)
    app.router.add_post("/api/corrections", post_correction)
    app.router.add_get("/api/stats", stats)
    app.router.add_post("/api/alerts/{alert_id}/verdict", verdict)
    app.router.add_get("/api/alerts/precision", precision)
    app.router.add_post("/api/tickets/{message_id}/ack", ack)
    return app


class KafkaPublisher:
    """An aiokafka producer; ``send`` waits for the broker's acknowledgement."""

    def __init__(self, settings: VigilSettings, bootstrap: str) -> None:
        from aiokafka import AIOKafkaProducer

        from streams.kafka_config import aiokafka_kwargs

        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", client_id="vigil-label-ui", **aiokafka_kwargs(settings)
        )

    async def start(self) -> None:
        await self._producer.start()

    async def send(self, topic: str, key: str, value: bytes) -> None:
        await self._producer.send_and_wait(topic, value=value, key=key.encode())

    async def stop(self) -> None:
        await self._producer.stop()


async def serve(settings: VigilSettings, store: ClickHouseStore, bootstrap: str,
                ready: Callable[[str], None] | None = None) -> None:
    """Serve the UI on ui_host:ui_port until cancelled, owning the queue or standing by for it."""
    publisher = KafkaPublisher(settings, bootstrap)
    await publisher.start()
    ownership = QueueOwnership(settings.ui_url)
    service = Service(settings, store, publisher.send, ownership=ownership)
    runner = web.AppRunner(build_app(service), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.ui_host, settings.ui_port)
        await site.start()
        if ready is not None:
            ready(f"http://{settings.ui_host}:{settings.ui_port}/")
        await run_election(settings, bootstrap, ownership, take_over=service.take_over, publish=publisher.send)
    finally:
        await runner.cleanup()
        await service.close()
        await publisher.stop()


def attach_to_worker(app: Any, settings: VigilSettings, store: ClickHouseStore) -> None:
    """Serve the UI from a faust worker (``vigil up`` worker 0), on the worker's ClickHouse store:
    embedded chdb admits one process, so a separate UI process could not open it. The task is
    cancelled when the worker stops, which closes the site and the producer."""

    async def label_ui() -> None:
        try:
            await serve(settings, store, settings.kafka_brokers or "",
                        ready=lambda url: log.info("labelling UI on %s", url))
        except OSError as e:
            # A taken port must not take the stream down with it.
            log.error("labelling UI not served on %s:%s: %s", settings.ui_host, settings.ui_port, e)

    app.task(label_ui)


__all__ = [
    "AckOut", "CorrectionIn", "CorrectionOut", "HealthOut", "ItemView", "LabelIn", "LabelSets", "LeaseIn", "LeaseOut",
    "PrecisionOut", "QueueOut", "Service", "StatsOut", "StepIn", "StepOut", "VerdictIn", "VerdictOut",
    "build_app", "serve",
]
