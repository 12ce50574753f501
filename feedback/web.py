"""The labelling service: an aiohttp app with the labelling page (``/``) and its JSON API.

Every ``/api`` call needs ``Authorization: Bearer <token>`` (``vigil annotators add NAME``).
Queue state lives in a LeaseBook in the memory of the instance that owns the queue, fed from
ClickHouse (label_queue) and written back on every change. Several instances may run: one owns the
queue (``feedback.election``) and the others forward the queue calls to it, serving everything
else themselves. Every correction is published to the corrections topic (awaited) and then
written to the feedback table.

Endpoints (request and response bodies: ``feedback/api_models.py``):
  GET  /health                         no token: this instance's queue role and the owner's URL
  GET  /metrics                        no token: Prometheus metrics (queue owner and depth, take-overs, forwarding)
  GET  /api/queue                      queue depth per state and the next open items
  POST /api/queue/lease                your leased item (the one you hold, else the next)
  POST /api/items/{id}/label|skip|undo finish or reopen an item (undo takes its label back); the reply
                                       carries your next item
  POST /api/corrections                programmatic/implicit labels (e.g. a re-routed ticket)
  GET  /api/stats                      queue, per-annotator counts, inter-annotator agreement
  POST /api/alerts/{id}/verdict        a responder's verdict; becomes corrections or review items
  GET  /api/alerts/precision           alert precision per rule
  POST /api/tickets/{message_id}/ack   publishes a TicketAck (stops the ticket's SLA clock)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from feedback.agreement import Agreement
from feedback.api_models import (
    AckOut,
    AgreementOut,
    CorrectionIn,
    CorrectionOut,
    HealthOut,
    LabelIn,
    LeaseIn,
    LeaseOut,
    PrecisionOut,
    QueueOut,
    RulePrecisionOut,
    StatsOut,
    StepIn,
    StepOut,
    VerdictIn,
    VerdictOut,
    error_body,
)
from feedback.contracts import Correction, CorrectionSource, ItemState, LabelRequest, QueueItem, SelectionReason, Task
from feedback.election import run_election
from feedback.label_service import FORWARDED_HEADER, TASKS, Service, retry_later
from feedback.leases import AlreadyLabelled, LeaseError, UnknownItem
from feedback.ownership import NotQueueOwner, OwnershipUnconfirmed, QueueOwnership
from streams.alerting.contracts import Alert, AlertVerdict, TicketAck
from streams.alerting.precision import LabelSuggestion, label_suggestions, rule_precision, standing_confirmations
from streams.clickhouse import ClickHouseError, ClickHouseStore
from streams.contracts import Kind
from streams.pii import mask_pii
from streams.settings import VigilSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_KIND_BY_TASK = {"sentiment": Kind.news, "triage": Kind.support}
M = TypeVar("M", bound=BaseModel)


# --- plumbing ----------------------------------------------------------------------------------

SERVICE = web.AppKey("service", Service)
ANNOTATOR = web.RequestKey("annotator", str)


def _reply(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


async def _body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()  # over client_max_size: aiohttp answers 413
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as e:
        detail = [{"loc": list(err["loc"]), "msg": err["msg"]} for err in e.errors()]
        raise web.HTTPUnprocessableEntity(
            text=error_body(f"the body is not a valid {model.__name__}", detail), content_type="application/json"
        ) from None


def _unprocessable(message: str) -> web.HTTPUnprocessableEntity:
    return web.HTTPUnprocessableEntity(text=error_body(message), content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _queue_call(handler: Handler, *, changes: bool = True) -> Handler:
    """A call on the lease book: the queue's owner serves it, another instance forwards it there.
    During a hand-over it waits for the new owner (up to ui_handover_wait_s); a forwarded call
    does not wait here, its sender does (it would hold up this instance's stop). A call that
    ``changes`` the queue is served only once the election confirms the ownership, and answered
    only once it confirms it again after the write (503 otherwise, the change saved). Changes
    run one at a time."""

    async def run(request: web.Request) -> web.Response:
        svc = request.app[SERVICE]
        if not svc.ownership.owns and not request.headers.get(FORWARDED_HEADER):
            await svc.ownership.decided(svc.settings.ui_handover_wait_s)
        try:
            async with svc.ownership.serving(changes=changes):
                if not changes:
                    return await handler(request)
                async with svc.changing:
                    return await handler(request)
        except OwnershipUnconfirmed as e:
            svc.metrics.unconfirmed.inc()
            return retry_later(f"{e}; retry in a few seconds")
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
                text=error_body("send Authorization: Bearer <token>; an admin creates one with `vigil annotators add NAME`"),
            )
        request[ANNOTATOR] = who
    try:
        return await handler(request)
    except UnknownItem as e:
        return web.Response(status=404, text=error_body(str(e)), content_type="application/json")
    except LeaseError as e:
        code = "already_labelled" if isinstance(e, AlreadyLabelled) else None
        return web.Response(status=409, text=error_body(str(e), code=code), content_type="application/json")
    except ClickHouseError as e:
        log.error("ClickHouse failed during %s %s: %s", request.method, request.path, e)
        return web.Response(status=503, text=error_body(f"storage unavailable, retry later: {e}"),
                            content_type="application/json")
    except KafkaError as e:
        log.error("Kafka failed during %s %s: %s", request.method, request.path, e)
        return web.Response(status=503, text=error_body(f"Kafka unavailable, retry later: {e}"),
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
    svc = request.app[SERVICE]
    if svc.ownership.owns:
        # The queue's depth as of the last read: when nobody is labelling, no queue call reads it.
        try:
            await svc.refresh()
        except ClickHouseError as e:
            log.warning("labelling queue not read again for /metrics: %s", e)
    body = generate_latest(svc.metrics.registry)
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
    return _reply(LeaseOut(item=svc.view(item), progress=await svc.progress(who, now, body.task)))


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
    # queue): the item is finished without publishing the label a second time. Only this item's
    # own label counts: the same label stored under the same id by an alert verdict is replaced,
    # or the verdict, turned false, would take the queue's label back with its own.
    saved = await svc.io(svc.feedback.fetch_correction, correction.correction_id)
    if not (_queue_label_of(saved, r.item_id) and saved.human_label == body.label):
        await svc.correct([correction])
    done = svc.book.label(r.item_id, who, now)
    await svc.save([done])
    await svc.count(who, r.task, "labelled", now)
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
    """The label the feedback table holds for this correction id, None when it holds none (or
    only a withdrawn one)."""
    saved = await svc.io(svc.feedback.fetch_correction, correction_id)
    return saved.human_label if saved is not None and not saved.withdrawn else None


def _queue_label_of(saved: Correction | None, item_id: str) -> TypeGuard[Correction]:
    """Whether ``saved`` is a label given to queue item ``item_id``, and not withdrawn (the same
    id also holds the annotator's verdict confirmations and API corrections of the message)."""
    return (saved is not None and not saved.withdrawn and saved.source is CorrectionSource.queue
            and saved.item_id == item_id)


async def _withdraw_label(svc: Service, who: str, item: QueueItem, now: datetime) -> None:
    """Take back the label ``who`` gave ``item`` in the queue, if one is stored: its withdrawal
    replaces it on the corrections topic and in the feedback table, so that retraining and
    agreement no longer count it when the item is then skipped or left."""
    r = item.request
    saved = await svc.io(svc.feedback.fetch_correction, Correction.make_id(r.task, r.message_id, who))
    if _queue_label_of(saved, r.item_id):
        # The queue label replaced any label a useful verdict of theirs gave the message (one id holds
        # both): once it is gone, the verdict's stands again.
        standing = await svc.io(_standing_confirmations, svc.store, r.task, who, [r.message_id])
        restored = [_confirmation(alert, s, who, now) for alert, s in standing.values()]
        await svc.correct([saved.withdrawal(now), *restored])


async def _step(svc: Service, who: str, now: datetime, next_task: str | None, finished: QueueItem,
                correction_id: str | None = None) -> web.Response:
    """Answer a finished item with the annotator's next lease (the one they hold, on a repeat)."""
    nxt = await svc.lease_next(who, now, next_task)
    return _reply(StepOut(finished=svc.view(finished), item=svc.view(nxt), correction_id=correction_id,
                          progress=await svc.progress(who, now, next_task)))


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
        await svc.count(who, done.request.task, "skipped", now)
    return await _step(svc, who, now, body.next_task, done)


@_queue_call
async def undo(request: web.Request) -> web.Response:
    svc, who = request.app[SERVICE], _annotator(request)
    body = await _body(request, StepIn)
    now = svc.clock()
    item_id = request.match_info["item_id"]
    reopened = svc.book.held_by(who, now)
    # Already back with this annotator: a repeat of an undo that took effect is answered again,
    # after the steps it may not have finished (the withdrawal, the save).
    if reopened is not None and reopened.request.item_id == item_id:
        await _withdraw_label(svc, who, reopened, now)
        await svc.save([reopened])
    else:
        before = svc.book.get(item_id)
        changed = svc.book.undo(item_id, who, now)
        reopened = changed[-1]
        await _withdraw_label(svc, who, reopened, now)
        await svc.save(changed)
        if before is not None:
            await svc.count(who, before.request.task, "labelled" if before.state is ItemState.labelled else "skipped",
                            now, -1)
    return _reply(StepOut(finished=svc.view(reopened), item=svc.view(reopened),
                          progress=await svc.progress(who, now, body.next_task)))


async def post_correction(request: web.Request) -> web.Response:
    svc, who = request.app[SERVICE], _annotator(request)
    body = await _body(request, CorrectionIn)
    labels = svc.labels(body.task)
    if body.human_label not in labels:
        raise _unprocessable(f"{body.human_label!r} is not a {body.task} label; use one of: {', '.join(labels)}")
    # Support text is masked wherever Vigil keeps it; a client may send a ticket as the customer wrote it.
    text = mask_pii(body.text).text if _KIND_BY_TASK[body.task] is Kind.support else body.text
    correction = Correction(
        correction_id=Correction.make_id(body.task, body.message_id, who), task=body.task,
        message_id=body.message_id, text=text, annotator=who, human_label=body.human_label,
        model_label=body.model_label, model_version=body.model_version, source=CorrectionSource.implicit,
        created_at=svc.clock(),
    )
    await svc.correct([correction])
    return _reply(CorrectionOut(correction_id=correction.correction_id), status=201)


async def stats(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]

    def read() -> StatsOut:
        # Counted in ClickHouse: every open page asks every 15 s, and the labels and skipped items
        # themselves would be read whole, however many.
        queue = {t: svc.feedback.queue_stats(t) for t in TASKS}
        annotators: dict[str, dict[str, int]] = {}
        for name, n in svc.feedback.labels_per_annotator().items():
            annotators.setdefault(name, {"labels": 0, "skipped": 0})["labels"] = n
        for name, n in svc.feedback.skipped_per_annotator().items():
            annotators.setdefault(name, {"labels": 0, "skipped": 0})["skipped"] = n
        counted = svc.feedback.agreement()
        agree = {}
        for t in TASKS:
            a = counted.get(t, Agreement(0, 0, 0, 0))
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


def _confirmation(alert: Alert, s: LabelSuggestion, who: str, now: datetime) -> Correction:
    """``who``'s label for a message behind ``alert``, from their useful verdict on it."""
    return Correction(
        correction_id=Correction.make_id(alert.kind, s.message_id, who), task=alert.kind,
        message_id=s.message_id, text=s.text, annotator=who, human_label=s.label, model_label=s.label,
        model_version=alert.model_version or None, source=CorrectionSource.alert_verdict, created_at=now,
    )


def _standing_confirmations(store: ClickHouseStore, kind: str, who: str,
                            message_ids: list[str]) -> dict[str, tuple[Alert, LabelSuggestion]]:
    """Of these messages, those a standing useful verdict of ``who`` on some alert confirms."""
    alerts = store.alerts_behind(kind, message_ids)
    found = standing_confirmations(alerts, store.fetch_verdicts([a.id for a in alerts]), who)
    return {m: found[m] for m in message_ids if m in found}


async def verdict(request: web.Request) -> web.Response:
    svc, who = request.app[SERVICE], _annotator(request)
    body = await _body(request, VerdictIn)
    alert_id = request.match_info["alert_id"]
    alert = await svc.io(svc.store.fetch_alert, alert_id)
    if alert is None:
        raise web.HTTPNotFound(text=error_body(f"no alert {alert_id} in ClickHouse"), content_type="application/json")
    now = svc.clock()
    v = AlertVerdict(alert_id=alert.id, useful=body.useful, by=who, at=now, note=body.note)
    await svc.io(svc.store.write_verdicts, [v])
    suggestions = label_suggestions(alert, v)
    # A verdict's labels share the id of this responder's own label of the message: one given in the
    # queue must not be replaced by the model's, and a useful verdict turned false takes its back.
    before = await svc.io(svc.feedback.corrections_by_id,
                          [Correction.make_id(alert.kind, s.message_id, who) for s in suggestions])
    own = {c.message_id for c in before.values() if c.source is not CorrectionSource.alert_verdict and not c.withdrawn}
    confirmed = [_confirmation(alert, s, who, now)
                 for s in suggestions if s.action == "confirm" and s.message_id not in own]
    taken_back = [
        c.withdrawal(now) for c in before.values()
        if not v.useful and c.source is CorrectionSource.alert_verdict and not c.withdrawn
    ]
    if taken_back:
        standing = await svc.io(_standing_confirmations, svc.store, alert.kind, who, [c.message_id for c in taken_back])
        taken_back = [c for c in taken_back if c.message_id not in standing]
    if confirmed or taken_back:
        await svc.correct(confirmed + taken_back)
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

        from streams.kafka_config import client_kwargs

        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", client_id="vigil-label-ui", **client_kwargs(settings)
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

