"""One retraining round for a task: corrections -> trigger -> screen -> fine-tune -> gate -> promote.

Every round that starts leaves a trace: a retrain_started event, then its end: promoted or
gate_refused with the gate's figures and reasons, or retrain_failed with what went wrong (model_events
table and model-events topic). The end's event id is tied to the start's (ModelEvent.round_end_id).
The challenger is kept in the registry either way, with its parent and training config, so a refusal
can be inspected with `vigil models show`.

Which corrections are new is counted from the last round that FINISHED (promoted or gate_refused:
the gate judged what it trained on): newer than the newest correction that round read, which its
retrain_started event records (figure corrections_through_ms), so both sides of the comparison are
on the labelling clock. A round recorded before that figure existed counts from its start. A round
that failed, or died without recording its end, trained nothing that counts: its corrections stay new.
A skipped round (the trigger said no) is no round: it records nothing and moves nothing.

While a round runs, its process stores a heartbeat (round_heartbeat.py). When its worker is
SIGKILLed nobody records its end; the next trigger check (any worker's, or `vigil retrain`'s) finds
its heartbeat stale and records the retrain_failed for it. A round with no heartbeat at all (recorded
before heartbeats existed) is running until VIGIL_RETRAIN_ROUND_TIMEOUT_H after its start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from feedback.contracts import Correction, ModelEvent, ModelEventKind
from feedback.drift import signals_worsening
from feedback.events import publish_model_events
from feedback.gate import (
    Evaluation,
    GateConfig,
    ScreenConfig,
    consensus,
    judge,
    screen_annotators,
)
from feedback.round_heartbeat import RoundHeartbeat, heartbeating
from feedback.selection import fingerprint
from feedback.triggers import TriggerDecision, TriggerPolicy, decide
from models.registry import ModelCard, ModelRegistry, RegistryError
from streams.logs import default_worker_id
from streams.settings import VigilSettings

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    skipped = "skipped"  # the trigger said no: nothing to do
    refused = "refused"  # trained, but the gate kept the champion
    promoted = "promoted"


# cron-friendly: 0 when all is well (promoted, or nothing to do), 3 when a challenger was refused
# (worth a look, not a failure); errors exit 1 from the CLI.
EXIT_CODES = {Outcome.skipped: 0, Outcome.promoted: 0, Outcome.refused: 3}


@dataclass(frozen=True, slots=True)
class RetrainReport:
    task: str
    outcome: Outcome
    reason: str
    champion: str
    challenger: str | None = None
    figures: dict[str, float] = field(default_factory=dict)
    dropped_annotators: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    @property
    def summary(self) -> str:
        """One line: what happened and why (the CLI prints it, the background job logs it)."""
        return (f"{self.task}: {self.outcome.value} (champion was {self.champion}"
                + (f", challenger {self.challenger}" if self.challenger else "") + f"): {self.reason}")


@dataclass(frozen=True, slots=True)
class RoundStart:
    """What a round starts from: the champion, every correction, and the trigger's verdict."""

    champion_version: str
    champion: ModelCard
    corrections: list[Correction]
    new_corrections: int
    trigger: TriggerDecision


def held_out_size(n_items: int, fraction: float) -> int:
    return round(n_items * fraction)


def split_recent(items: Sequence[tuple[Correction, str]], fraction: float,
                 champion_texts: Collection[bytes] = frozenset()) -> tuple[list, list]:
    """Oldest part to train on, newest ``fraction`` held out to judge: the gate then asks whether the
    challenger does better on what people are labelling NOW, on items neither model saw. An item
    whose text fingerprint is in ``champion_texts`` (the champion may have trained on it) is never
    held out, so the held-out part is the newest of the others; it trains, as it did the champion.
    A held-out item whose text (normalised, as selection compares texts) is also among the training
    items is left out: a retweet or a re-sent ticket under another message id would otherwise be
    judged on text the challenger was trained on."""
    fresh = [i for i, (c, _) in enumerate(items) if fingerprint(c.text) not in champion_texts]
    held = set(fresh[max(0, len(fresh) - held_out_size(len(items), fraction)):])
    train = [x for i, x in enumerate(items) if i not in held]
    trained = {fingerprint(c.text) for c, _ in train}
    return train, [(c, y) for i, (c, y) in enumerate(items) if i in held and fingerprint(c.text) not in trained]


def too_few_to_judge(corrections: Sequence[Correction], fraction: float, min_recent: int) -> str | None:
    """Why the gate is certain to refuse any challenger trained on ``corrections``, or None.

    One item per corrected message is the most a round can have (screening and consensus only take
    items away), so when even that many hold out fewer than the gate's minimum, training would
    only spend an hour on a challenger the gate must refuse, and use the corrections up."""
    messages = len({c.message_id for c in corrections})
    held = held_out_size(messages, fraction)
    if held >= min_recent:
        return None
    return (f"{messages} corrected messages would hold out {held} recent corrections, fewer than the gate needs "
            f"to judge a challenger ({min_recent}, VIGIL_GATE_MIN_RECENT): nothing trained, the corrections stay "
            "new until more are labelled (or lower VIGIL_GATE_MIN_RECENT, raise VIGIL_RETRAIN_HOLDOUT_FRACTION)")


def stream_prior(predicted_mix: Mapping[str, int], labels: Sequence[str]) -> dict[str, float] | None:
    """The stream's class mix, estimated from the champion's labels of its recent messages (one
    pseudo-count per label, so no class is ruled out): the queue's own mix is biased towards what
    the champion is unsure of. None when the champion has scored nothing yet."""
    total = sum(predicted_mix.get(y, 0) for y in labels)
    if total == 0:
        return None
    return {y: (predicted_mix.get(y, 0) + 1) / (total + len(labels)) for y in labels}


def _event(kind: ModelEventKind, task: str, version: str, detail: str, figures: dict[str, float] | None = None,
           now: Callable[[], datetime] = lambda: datetime.now(UTC), event_id: str | None = None) -> ModelEvent:
    ids = {} if event_id is None else {"event_id": event_id}
    return ModelEvent(kind=kind, task=task, model_version=version, detail=detail[:4000], figures=figures or {},
                      created_at=now(), **ids)


def failed_event(started: ModelEvent, reason: str,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> ModelEvent:
    """The end of the round that ``started`` opened, when it failed: a retrain_failed event saying why."""
    at = now()
    return ModelEvent(event_id=ModelEvent.round_end_id(started.event_id), kind=ModelEventKind.retrain_failed,
                      task=started.task, model_version=started.model_version, detail=reason[:4000],
                      figures={"round_seconds": max(0.0, (at - started.created_at).total_seconds())}, created_at=at)


READ_THROUGH = "corrections_through_ms"  # figure of a retrain_started event
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(t: datetime) -> int:
    # Whole milliseconds, as ClickHouse keeps the times: a correction read back equals the mark it set.
    return (t - _EPOCH) // timedelta(milliseconds=1)


TRAINED_THROUGH = "corrections_trained_through_ms"  # training_config key of a fine-tuned version's card


def trained_through(card: ModelCard) -> int | None:
    """The newest labelling time (epoch ms) among the corrections ``card``'s version and the versions
    it was fine-tuned from trained on; None for a version that never trained on corrections. A card
    written before cards recorded it counts everything labelled before the version was made: more
    than it trained on, which can only keep more out of a held-out part."""
    cfg = card.training_config
    if TRAINED_THROUGH in cfg:
        return int(cfg[TRAINED_THROUGH])
    return epoch_ms(card.created_at) if "corrections" in cfg else None


def champion_texts(champion: ModelCard, corrections: Sequence[Correction]) -> set[bytes]:
    """The text fingerprints the champion may have trained on: those of every correction labelled by
    its ``trained_through``, whoever the screening keeps now (it may have kept another annotator then)."""
    through = trained_through(champion)
    if through is None:
        return set()
    return {fingerprint(c.text) for c in corrections if epoch_ms(c.created_at) <= through}


def read_through(started: ModelEvent) -> int:
    """The newest labelling time (epoch ms) among the corrections the round ``started`` read; for a
    round recorded before that figure existed, its start time, as counted then."""
    ms = started.figures.get(READ_THROUGH)
    return epoch_ms(started.created_at) if ms is None else int(ms)


@dataclass(frozen=True, slots=True)
class RoundHistory:
    last_finished: datetime | None  # start of the newest round that ended promoted or gate_refused
    running_since: datetime | None  # start of the newest round with no end yet that is alive
    running_beat: datetime | None = None  # that round's last heartbeat, if it has any
    dead: tuple[ModelEvent, ...] = ()  # the retrain_failed ends of rounds whose heartbeat went stale: to record
    read_through: int | None = None  # the newest correction (epoch ms) the finished rounds read


def dead_round_reason(started: ModelEvent, beat: RoundHeartbeat, now: datetime, stale: timedelta) -> str:
    return (f"the process running round {started.event_id} ({beat.owner}) stopped heartbeating at "
            f"{beat.beat_at:%Y-%m-%d %H:%M:%S} UTC, {(now - beat.beat_at).total_seconds():.0f}s before this check "
            f"(dead after {stale.total_seconds():g}s, VIGIL_RETRAIN_STALE_S): it was killed (OOM killer, SIGKILL, "
            "a lost node?); see its log. Its corrections stay new: the next round trains on them.")


def round_history(events: Sequence[ModelEvent], heartbeats: Sequence[RoundHeartbeat], now: datetime,
                  timeout: timedelta, stale: timedelta) -> RoundHistory:
    """A task's retrain rounds from its model events and heartbeats: each retrain_started opens one,
    the event with its round_end_id ends it. A round without an end whose last heartbeat is less than
    ``stale`` old is running; an older heartbeat means its process died (its worker was SIGKILLed):
    its retrain_failed end is in ``dead``, for the caller to record. A round without an end and
    without any heartbeat (older data) is running until ``timeout`` after its start, then died
    unrecorded. Neither kind of dead round counts as finished, like a failed one."""
    beats = {b.round_id: b for b in heartbeats}
    ends: dict[str, ModelEventKind] = {}
    for e in events:
        # A verdict stands even if a failure was recorded for the round after it (recording the
        # verdict on the topic failed, say): the round did train and get judged.
        if e.kind is not ModelEventKind.retrain_failed or e.event_id not in ends:
            ends[e.event_id] = e.kind
    finished: list[datetime] = []
    through: list[int] = []
    running: list[tuple[datetime, datetime | None]] = []
    dead: list[ModelEvent] = []
    for e in events:
        if e.kind is not ModelEventKind.retrain_started:
            continue
        end = ends.get(ModelEvent.round_end_id(e.event_id))
        beat = beats.get(e.event_id)
        if end in (ModelEventKind.promoted, ModelEventKind.gate_refused):
            finished.append(e.created_at)
            through.append(read_through(e))
        elif end is not None:
            continue
        elif beat is not None and now - beat.beat_at >= stale:
            dead.append(failed_event(e, dead_round_reason(e, beat, now, stale), lambda: now))
        elif beat is not None or now - e.created_at < timeout:
            running.append((e.created_at, None if beat is None else beat.beat_at))
    since, beat_at = max(running, key=lambda r: r[0], default=(None, None))
    return RoundHistory(max(finished, default=None), since, beat_at, tuple(dead), max(through, default=None))


def _store_and_publish(settings: VigilSettings, store) -> Callable[[Sequence[ModelEvent]], None]:
    def record(events: Sequence[ModelEvent]) -> None:
        store.write_model_events(events)
        publish_model_events(settings, events)

    return record


def _still_running(since: datetime, beat_at: datetime | None, at: datetime, timeout: timedelta,
                   stale: timedelta) -> str:
    head = (f"a round started at {since:%Y-%m-%d %H:%M:%S} UTC ({(at - since).total_seconds() / 60:.0f} min ago) "
            "has not ended yet; ")
    if beat_at is None:
        return head + (f"it has no heartbeat and counts as dead {timeout.total_seconds() / 3600:g} h after its start "
                       "(VIGIL_RETRAIN_ROUND_TIMEOUT_H), or use --force")
    return head + (f"its last heartbeat was {(at - beat_at).total_seconds():.0f}s ago and it counts as "
                   f"dead once that is {stale.total_seconds():g}s (VIGIL_RETRAIN_STALE_S), or use --force")


def check_trigger(
    settings: VigilSettings,
    task: str,
    store,
    *,
    force: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    record: Callable[[Sequence[ModelEvent]], None] | None = None,
) -> RoundStart:
    """Whether a round should train now, from the registry and ``store`` (a FeedbackStore) alone:
    cheap, no torch, so the background job asks it before it starts a training process.

    No round starts while another is running (unless forced): one in the background job and one
    from cron, or two crons, must not both train on the same corrections. A round found dead (its
    heartbeat is stale) gets its retrain_failed end here, through ``record`` (default: stored in
    ``store`` and sent to the model-events topic)."""
    registry = ModelRegistry(settings.registry_dir)
    champion_version = registry.champion(task)
    if champion_version is None:
        raise RegistryError(f"task {task!r} has no champion to fine-tune: promote one with "
                            f"`vigil models promote {task} VERSION` (or `vigil train --task {task} --promote`)")
    champion = registry.card(task, champion_version)

    events = store.fetch_model_events(task)
    heartbeats = store.fetch_round_heartbeats(task)
    at = now()
    timeout, stale = timedelta(hours=settings.retrain_round_timeout_h), timedelta(seconds=settings.retrain_stale_s)
    history = round_history(events, heartbeats, at, timeout, stale)
    if history.dead:
        (record or _store_and_publish(settings, store))(history.dead)
        for end in history.dead:
            log.warning("%s: round ended as failed: %s", task, end.detail)
    last = history.last_finished
    # Only the serving champion's drift says something about the model a round would fine-tune; a
    # replaced champion's drift was about a model that is gone. Drift a withdrawal took back (the
    # audit labels behind it were undone) says nothing.
    withdrawn = {e.event_id for e in events if e.kind is ModelEventKind.drift_withdrawn}
    drift = sum(1 for e in events if e.kind is ModelEventKind.drift and e.model_version == champion_version
                and (last is None or e.created_at > last) and ModelEvent.withdrawal_id(e.event_id) not in withdrawn
                and signals_worsening(e))
    # A label younger than the labelling UI's undo window may still be taken back: it is neither
    # counted nor trained on until that window has passed.
    final_by = at - timedelta(seconds=settings.ui_undo_window_s)
    corrections = [c for c in store.fetch_corrections(task) if c.created_at <= final_by]
    seen = history.read_through
    new = sum(1 for c in corrections if seen is None or epoch_ms(c.created_at) > seen)
    if history.running_since is not None and not force:
        return RoundStart(champion_version, champion, corrections, new, TriggerDecision(
            False, _still_running(history.running_since, history.running_beat, at, timeout, stale), new))
    # Never retrained: the interval runs from when the champion was trained, but every correction is new.
    trigger = decide(TriggerPolicy.from_settings(settings), new_corrections=new,
                     last_retrain=last or champion.created_at, now=at, drift_events=drift, force=force)
    if trigger.retrain:
        doomed = too_few_to_judge(corrections, settings.retrain_holdout_fraction, settings.gate_min_recent)
        if doomed is not None:
            trigger = TriggerDecision(False, f"{trigger.reason}, but {doomed}", new)
    return RoundStart(champion_version, champion, corrections, new, trigger)


def run_retrain(
    settings: VigilSettings,
    task: str,
    store,
    *,
    force: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    record: Callable[[Sequence[ModelEvent]], None] | None = None,
    owner: str | None = None,
) -> RetrainReport:
    """One round (`vigil retrain`, and the background job's training process). ``store`` is a
    FeedbackStore, or anything with its fetch_model_events, fetch_corrections, write_model_events
    and round-heartbeat calls; ``record`` stores and publishes events (default: write them to
    ``store`` and send them to the model-events topic when a broker is configured). ``owner`` names
    this process in the round's heartbeats (default: VIGIL_WORKER_ID, else host-pid)."""
    record = record or _store_and_publish(settings, store)
    start = check_trigger(settings, task, store, force=force, now=now, record=record)
    if not start.trigger.retrain:
        return RetrainReport(task, Outcome.skipped, start.trigger.reason, start.champion_version)
    started = _event(ModelEventKind.retrain_started, task, start.champion_version, start.trigger.reason,
                     {"corrections": float(len(start.corrections)), "new_corrections": float(start.new_corrections),
                      READ_THROUGH: float(max(epoch_ms(c.created_at) for c in start.corrections))},
                     now)
    who = owner or settings.worker_id or default_worker_id()

    def beat() -> None:
        store.write_round_heartbeats([RoundHeartbeat(round_id=started.event_id, task=task, owner=who, beat_at=now())])

    # The first beat before the start: a round killed right after it started still has one, and is
    # found dead after VIGIL_RETRAIN_STALE_S, not VIGIL_RETRAIN_ROUND_TIMEOUT_H.
    beat()
    record([started])
    try:
        with heartbeating(beat, settings.retrain_heartbeat_s, task):
            return _train_and_judge(settings, task, store, start, record, now,
                                    ModelEvent.round_end_id(started.event_id))
    except BaseException as e:  # also an interrupt: the round must not stay open until it times out
        try:
            record([failed_event(started, f"{type(e).__name__}: {e}", now)])
        except Exception as also:  # noqa: BLE001 - the round's own error is the one to raise
            log.error("%s: the failed round was not recorded as retrain_failed: %s", task, also)
        raise


def _train_and_judge(
    settings: VigilSettings,
    task: str,
    store,
    start: RoundStart,
    record: Callable[[Sequence[ModelEvent]], None],
    now: Callable[[], datetime],
    end_id: str,
) -> RetrainReport:
    """The round after its retrain_started event; its verdict is recorded with the id ``end_id``."""
    champion_version, champion, corrections = start.champion_version, start.champion, start.corrections

    import torch

    from models.engine import pick_device, set_cpu_threads
    from models.retrain import (
        RetrainConfig,
        fine_tune,
        gold_set,
        load_classifier,
        predict,
    )

    registry = ModelRegistry(settings.registry_dir)
    t0 = time.perf_counter()
    device = pick_device(settings.device)
    if device.type == "cpu":
        set_cpu_threads(settings.cpu_threads)
    champ_dir = registry.resolve(task, champion_version)
    champ_model, tokenizer = load_classifier(champ_dir, device)
    max_length = settings.retrain_max_length
    # The champion's view of every corrected text: confident predictions are evidence against an
    # annotator who contradicts them systematically.
    texts = {c.message_id: c.text for c in corrections}
    ids = list(texts)
    pred, conf = predict(champ_model, tokenizer, [texts[i] for i in ids], max_length, device)
    screened = screen_annotators(corrections, dict(zip(ids, zip(pred, conf.tolist(), strict=True), strict=True)),
                                 ScreenConfig.from_settings(settings))
    for who, why in screened.dropped.items():
        log.warning("%s: dropping annotator %s before training: %s", task, who, why)
    labelled = consensus(screened.kept)
    # Held out: only what neither model trained on. This round's newest items are not always what the
    # round that trained the champion held out (a change of screening or of the fraction, a withdrawn
    # label move the split), so the champion's card says what it trained on.
    train_items, recent_items = split_recent(labelled, settings.retrain_holdout_fraction,
                                             champion_texts(champion, corrections))
    gold = gold_set(champion, settings.bundled_data_dir, settings.gold_cap, [c.text for c in corrections])

    def refuse(reason: str, figures: dict[str, float], challenger: str | None = None) -> RetrainReport:
        record([_event(ModelEventKind.gate_refused, task, challenger or champion_version, reason, figures, now,
                       end_id)])
        return RetrainReport(task, Outcome.refused, reason, champion_version, challenger, figures, screened.dropped)

    base_figures = {"corrections": float(len(corrections)), "labelled_items": float(len(labelled)),
                    "train_items": float(len(train_items)), "recent_items": float(len(recent_items)),
                    "dropped_annotators": float(len(screened.dropped))}
    if not train_items:
        return refuse(f"nothing left to train on after screening ({len(labelled)} labelled items)", base_figures)
    gate_cfg = GateConfig.from_settings(settings)
    if len(recent_items) < gate_cfg.min_recent:
        # The trigger counted every corrected message; screening, or leaving out what the champion
        # trained on, took enough away that the gate must refuse, so no challenger is trained for it.
        return refuse(f"only {len(recent_items)} held-out recent corrections after screening, of those the champion "
                      f"did not train on (< {gate_cfg.min_recent}, VIGIL_GATE_MIN_RECENT): nothing trained",
                      base_figures)

    prior = None
    if settings.retrain_prior_correction:
        prior = stream_prior(store.fetch_predicted_mix(task, champion_version, before=now(),
                                                       limit=settings.retrain_prior_window), champion.labels)
        if prior is None:
            log.warning("%s: no scored messages of %s to estimate the stream's class mix from: training on the "
                        "queue's mix (VIGIL_RETRAIN_PRIOR_CORRECTION)", task, champion_version)
    cfg = RetrainConfig(epochs=settings.retrain_epochs, lr=settings.retrain_lr, head_lr=settings.retrain_head_lr,
                        batch_size=settings.retrain_batch_size, max_length=max_length,
                        replay_size=settings.retrain_replay_size,
                        corrections_share=settings.retrain_corrections_share, seed=settings.retrain_seed)
    result = fine_tune(champion, champ_dir, [(c.text, y) for c, y in train_items], cfg,
                       data_dir=settings.bundled_data_dir, registry_root=settings.registry_dir, gold=gold,
                       device=settings.device, cpu_threads=settings.cpu_threads, class_prior=prior,
                       labelled=[c.text for c in corrections],
                       extra_config={"dropped_annotators": screened.dropped, "held_out_recent": len(recent_items),
                                     TRAINED_THROUGH: max(trained_through(champion) or 0,
                                                          *(epoch_ms(c.created_at) for c, _ in train_items))})
    gold_texts = [r.text for r in gold.rows]
    champ_gold, _ = predict(champ_model, tokenizer, gold_texts, max_length, device)
    recent_texts = [c.text for c, _ in recent_items]
    champ_recent, _ = predict(champ_model, tokenizer, recent_texts, max_length, device)
    chall_recent, _ = predict(result.model, result.tokenizer, recent_texts, max_length, device)
    del champ_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    decision = judge(
        Evaluation([r.label for r in gold.rows], champ_gold, result.gold_predictions),
        Evaluation([y for _, y in recent_items], champ_recent, chall_recent),
        gate_cfg,
    )
    figures = {**base_figures, **decision.figures, "train_seconds": result.seconds,
               "round_seconds": time.perf_counter() - t0}
    challenger = result.card.version
    if not decision.promote:
        return refuse(decision.summary, figures, challenger)
    if registry.champion(task) != champion_version:
        return refuse(f"the champion changed from {champion_version} to {registry.champion(task)} while "
                      f"{challenger} trained; judge it again against the new champion", figures, challenger)
    registry.promote(task, challenger)
    record([_event(ModelEventKind.promoted, task, challenger,
                   f"{challenger} (from {champion_version}) promoted: {decision.summary}", figures, now, end_id)])
    return RetrainReport(task, Outcome.promoted, decision.summary, champion_version, challenger, figures,
                         screened.dropped)
