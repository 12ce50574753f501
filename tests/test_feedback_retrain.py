"""The retraining loop on CPU with the tiny real model and real chdb: corrections in -> trigger ->
screen -> fine-tune from the champion -> gate -> promote (or refuse, with the reason recorded)."""

from __future__ import annotations

import random
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
import torch
from safetensors.torch import load_file

from feedback.contracts import Correction, CorrectionSource, ModelEvent, ModelEventKind
from feedback.drift import DriftMonitor
from feedback.retrain_job import TRAINED_THROUGH, Outcome, check_trigger, epoch_ms, run_retrain, trained_through
from feedback.selection import fingerprint
from feedback.store import FeedbackStore, open_feedback_store
from models.data import SplitConfig, duplicate_key, stratified_split
from models.engine import ModelTokenizer, encode
from models.registry import ModelRegistry
from models.retrain import corrections_repeats, gold_set
from models.tasks import get_task
from streams.clickhouse import open_store
from streams.contracts import Kind, ScoredMessage
from streams.settings import REPO_ROOT, VigilSettings
from tests.fixtures.models import copy_registry
from tests.test_feedback_drift import _audit_pair

pytestmark = pytest.mark.slow

T0 = datetime.now(UTC) - timedelta(hours=2)
FLIP = {"negative": "positive", "positive": "negative", "neutral": "neutral"}
POISON = {"negative": "positive", "positive": "negative", "neutral": "negative"}


def tweets(n: int, seed: int = 5) -> list[tuple[str, str]]:
    """Financial tweets from the TRAINING split (the gold set is the held-out split)."""
    rows = get_task("sentiment").load(REPO_ROOT / "data", ("twitter_financial_news",))
    train = stratified_split(rows, SplitConfig()).train
    return [(r.text, r.label) for r in random.Random(seed).sample(train, n)]


def corrections(pairs, annotator: str, *, flip: bool = False, start: int = 0) -> list[Correction]:
    out = []
    for i, (text, label) in enumerate(pairs):
        msg = f"tw-{start + i}"
        out.append(Correction(
            correction_id=Correction.make_id("sentiment", msg, annotator), task="sentiment", message_id=msg,
            text=text, annotator=annotator, human_label=FLIP[label] if flip else label, model_label=None,
            model_version="v1", source=CorrectionSource.queue, created_at=T0 + timedelta(seconds=start + i),
        ))
    return out


def loop_settings(tmp_path, tiny_registry) -> VigilSettings:
    settings = VigilSettings(
        # one torch thread: on 2 shared cores, two threads ran 8x slower per step than one. One epoch
        # (13 steps) moves the tiny champion well past every margin the gate tests need: measured
        # recent 0.65 -> 0.72 when promoted, gold 0.63 -> 0.55 (poisoned) and 0.58 (wrecking LR)
        data_dir=tmp_path, clickhouse_url=None, kafka_brokers=None, device="cpu", cpu_threads=1,
        retrain_min_corrections=100, retrain_epochs=1, retrain_max_length=32, retrain_replay_size=96,
        retrain_lr=1e-4, retrain_head_lr=3e-3, retrain_batch_size=32, gold_cap=160,
        retrain_holdout_fraction=0.25, gate_max_gold_drop=0.02, gate_min_recent=20,
    )
    copy_registry(tiny_registry, settings.registry_dir)
    return settings


@pytest.fixture
def loop(tmp_path, tiny_registry):
    settings = loop_settings(tmp_path, tiny_registry)
    open_store(settings).close()  # migrates
    store = open_feedback_store(settings)
    yield settings, store
    store.close()


def test_corrections_retrain_and_promote_then_nothing_to_do(loop):
    settings, store = loop
    registry = ModelRegistry(settings.registry_dir)
    store.write_corrections(corrections(tweets(400), "ann"))

    report = run_retrain(settings, "sentiment", store)
    assert report.outcome is Outcome.promoted, report.reason
    assert report.exit_code == 0
    assert (report.champion, report.challenger) == ("v1", "v2")
    assert registry.champion("sentiment") == "v2"
    f = report.figures
    assert f["recent_challenger"] > f["recent_champion"]
    assert f["gold_challenger"] >= f["gold_champion"] - settings.gate_max_gold_drop
    assert (f["train_items"], f["recent_items"]) == (300, 100)

    card = registry.card("sentiment", "v2")
    assert card.parent_version == "v1"
    cfg = card.training_config
    assert cfg["fine_tuned_from"] == "v1" and cfg["corrections"] == 300 and cfg["replay_rows"] == 96
    assert cfg["corrections_repeats"] == 1 and card.metrics.model_dump()["train_rows"] == 396
    assert cfg["corrections_fingerprint"].startswith("sha256:")
    assert cfg["gold_fingerprint"] == gold_set(registry.card("sentiment", "v1"), settings.bundled_data_dir,
                                               settings.gold_cap).fingerprint
    # fine-tuned FROM the champion: the weights moved, but from v1's, not from the base encoder's
    v1 = load_file(registry.resolve("sentiment", "v1") / "model.safetensors")
    v2 = load_file(registry.resolve("sentiment", "v2") / "model.safetensors")
    assert not torch.equal(v1["classifier.weight"], v2["classifier.weight"])
    assert card.metrics.accuracy == pytest.approx(f["gold_challenger"], abs=1e-4)
    # the challenger reads text as its champion did: without links (models/links.py)
    assert cfg["remove_links"] is True
    v2_tokenizer = ModelTokenizer(registry.resolve("sentiment", "v2"))
    assert (encode(v2_tokenizer, ["up https://t.co/x1 today"], 32).ids
            == encode(v2_tokenizer, ["up today"], 32).ids)

    started, promoted = store.fetch_model_events("sentiment")
    assert [started.kind, promoted.kind] == [ModelEventKind.retrain_started, ModelEventKind.promoted]
    newest = max(c.created_at for c in store.fetch_corrections("sentiment"))
    assert started.figures["corrections_through_ms"] == epoch_ms(newest)

    again = run_retrain(settings, "sentiment", store)
    assert again.outcome is Outcome.skipped and "no new corrections" in again.reason
    assert len(store.fetch_model_events("sentiment")) == 2


def test_gold_texts_people_corrected_leave_the_gold_set_that_judges_both_models(loop):
    """The demo replays the bundled files, gold rows included, so people label gold texts too (here
    re-posted under a new link, as tweets are): a challenger trained on them would be judged on its
    own training rows. They leave the gold set, for the champion and the challenger alike."""
    settings, store = loop
    registry = ModelRegistry(settings.registry_dir)
    gold = gold_set(registry.card("sentiment", "v1"), settings.bundled_data_dir, settings.gold_cap).rows
    reposted = [(f"{r.text} https://t.co/reposted", r.label) for r in gold[:60]]
    store.write_corrections(corrections(reposted + tweets(340), "ann"))  # the oldest 300 train

    report = run_retrain(settings, "sentiment", store)
    assert report.challenger is not None, report.reason
    assert report.figures["gold_n"] == len(gold) - 60
    card = registry.card("sentiment", report.challenger)
    assert card.metrics.n == len(gold) - 60 and "60 corrected texts left out" in card.metrics.eval_set


def test_the_replay_sample_repeats_no_text_people_labelled(loop):
    """The corrected tweets are bundled training rows: replayed, the held-out ones would train the
    challenger on what judges it, and the others with the corpus's label beside the person's."""
    settings, store = loop
    registry = ModelRegistry(settings.registry_dir)
    labelled = tweets(400)
    store.write_corrections(corrections(labelled, "ann"))
    report = run_retrain(settings, "sentiment", store)
    assert report.challenger is not None, report.reason
    trained = stratified_split(get_task("sentiment").load(settings.bundled_data_dir), SplitConfig()).train
    keys = {duplicate_key(text) for text, _ in labelled}
    copies = sum(duplicate_key(r.text) in keys for r in trained)  # a tweet's copies go with it
    assert copies >= 400
    assert registry.card("sentiment", report.challenger).training_config["replay_pool_rows"] == len(trained) - copies


def test_after_a_promotion_the_held_out_part_leaves_out_what_the_champion_trained_on(loop):
    """v2 trained on the 300 oldest of 400 corrections and was judged on the 100 newest. Then 60 of
    those are withdrawn (an alert's verdict turned to false) and 20 come: the newest quarter of the
    360 would reach back into v2's training. Its card says what that was, so they train instead,
    and the 60 left are too few to judge by (80 here): nothing is trained."""
    settings, store = loop
    registry = ModelRegistry(settings.registry_dir)
    first = corrections(tweets(400), "ann")
    store.write_corrections(first)
    assert run_retrain(settings, "sentiment", store).outcome is Outcome.promoted
    stored = store.fetch_corrections("sentiment")
    v2 = registry.card("sentiment", "v2")
    assert v2.training_config[TRAINED_THROUGH] == epoch_ms(stored[299].created_at)
    assert trained_through(v2) == epoch_ms(stored[299].created_at)
    # a card written before cards recorded it: everything labelled before the version was made
    older = v2.model_copy(update={"training_config": {k: v for k, v in v2.training_config.items()
                                                      if k != TRAINED_THROUGH}})
    assert trained_through(older) == epoch_ms(v2.created_at)
    assert trained_through(registry.card("sentiment", "v1")) is None  # trained on no corrections

    now = datetime.now(UTC)
    store.write_corrections([c.withdrawal(now - timedelta(minutes=30)) for c in first[300:360]])
    seen = {fingerprint(text) for text, _ in tweets(400)}
    new = [(text, y) for text, y in tweets(100, seed=77) if fingerprint(text) not in seen][:20]
    store.write_corrections(corrections(new, "ann", start=1000))
    report = run_retrain(settings.model_copy(update={"gate_min_recent": 80}), "sentiment", store, force=True)
    assert report.outcome is Outcome.refused and report.challenger is None, report.reason
    assert (report.figures["train_items"], report.figures["recent_items"]) == (300, 60)
    assert "the champion did not train on" in report.reason
    assert registry.versions("sentiment") == ["v1", "v2"]


def test_corrections_are_repeated_until_they_make_their_share_of_the_epoch():
    assert corrections_repeats(375, 1000, 0.5) == 3  # 1,125 corrections rows next to 1,000 replayed
    assert corrections_repeats(375, 1000, 0.75) == 8
    assert corrections_repeats(300, 96, 0.5) == 1  # already the majority: each once
    assert corrections_repeats(375, 1000, 0.0) == 1  # off
    assert corrections_repeats(375, 0, 0.5) == 1  # no replay
    for n, replay, share in [(20, 2000, 0.5), (375, 1000, 0.6), (1, 7, 0.3)]:
        k = corrections_repeats(n, replay, share)
        assert k * n / (k * n + replay) >= share > (k - 1) * n / ((k - 1) * n + replay)


def test_too_few_corrections_do_not_trigger(loop):
    settings, store = loop
    store.write_corrections(corrections(tweets(30), "ann"))
    report = run_retrain(settings, "sentiment", store)
    assert report.outcome is Outcome.skipped and "30 new corrections (< 100)" in report.reason
    assert store.fetch_model_events("sentiment") == []


def test_flipping_annotator_is_screened_out_and_the_rest_is_learned(loop):
    settings, store = loop
    pairs = tweets(400)
    # ann and bob label everything correctly; mallory flips negative<->positive on the same items
    # and on 100 more that nobody else labelled.
    store.write_corrections(corrections(pairs, "ann") + corrections(pairs, "bob")
                            + corrections(pairs, "mallory", flip=True)
                            + corrections(tweets(100, seed=9), "mallory", flip=True, start=1000))
    report = run_retrain(settings, "sentiment", store)
    assert set(report.dropped_annotators) == {"mallory"}
    assert "balanced agreement" in report.dropped_annotators["mallory"]
    assert report.outcome is Outcome.promoted, report.reason
    card = ModelRegistry(settings.registry_dir).card("sentiment", report.challenger)
    assert set(card.training_config["dropped_annotators"]) == {"mallory"}
    assert card.training_config["corrections"] == 300  # mallory's 100 lone items are gone


def test_a_round_the_gate_must_refuse_trains_nothing_and_leaves_its_corrections_new(loop):
    """60 corrected messages hold out 15, fewer than the gate's 20: the gate would refuse whatever
    was trained, so nothing is, and the corrections count towards the next round."""
    settings, store = loop
    settings = settings.model_copy(update={"retrain_min_corrections": 50})
    store.write_corrections(corrections(tweets(60), "ann"))
    report = run_retrain(settings, "sentiment", store)
    assert report.outcome is Outcome.skipped and report.exit_code == 0
    assert "60 new corrections >= 50, but 60 corrected messages would hold out 15" in report.reason
    assert "VIGIL_GATE_MIN_RECENT" in report.reason
    assert store.fetch_model_events("sentiment") == []
    assert ModelRegistry(settings.registry_dir).versions("sentiment") == ["v1"]
    assert check_trigger(settings, "sentiment", store).new_corrections == 60
    store.write_corrections(corrections(tweets(20, seed=9), "ann", start=1000))
    assert check_trigger(settings, "sentiment", store).trigger.retrain  # 80 hold out 20


def test_gate_refuses_a_poisoned_challenger_when_the_screen_cannot_see_it(loop):
    """Only the poisoner labelled, and the screen is off: the held-out recent corrections are poisoned
    too (so 'better on recent' would pass), and the frozen gold set is what refuses it."""
    settings, store = loop
    settings = settings.model_copy(update={"annotator_min_agreement": 0.0})
    # Every label wrong: swapping only negative and positive leaves two thirds of tweets (neutral)
    # right, and the gold set no longer fell once the replay stopped repeating the corrected texts.
    store.write_corrections(corrections([(text, POISON[label]) for text, label in tweets(400)], "mallory"))
    report = run_retrain(settings, "sentiment", store, force=True)
    assert report.outcome is Outcome.refused and report.exit_code == 3, report.reason
    assert "gold accuracy falls" in report.reason
    assert ModelRegistry(settings.registry_dir).champion("sentiment") == "v1"
    events = store.fetch_model_events("sentiment")
    assert [e.kind for e in events] == [ModelEventKind.retrain_started, ModelEventKind.gate_refused]
    assert events[1].model_version == report.challenger and "gold accuracy falls" in events[1].detail
    assert events[1].figures["gold_challenger"] < events[1].figures["gold_champion"]


def test_gate_refuses_a_worse_challenger(loop):
    """Correct labels, but a learning rate that wrecks the encoder: worse on gold, refused."""
    settings, store = loop
    settings = settings.model_copy(update={"retrain_lr": 5e-3, "retrain_head_lr": 5e-2})
    store.write_corrections(corrections(tweets(400), "ann"))
    report = run_retrain(settings, "sentiment", store)
    assert report.outcome is Outcome.refused, report.reason
    assert ModelRegistry(settings.registry_dir).champion("sentiment") == "v1"
    assert report.figures["gold_challenger"] < report.figures["gold_champion"] - settings.gate_max_gold_drop


def test_a_failed_round_is_recorded_and_leaves_its_corrections_new_and_a_finished_one_uses_them_up(loop):
    settings, store = loop
    # a quick round that the gate refuses (it asks for a gain no challenger can have): still a finished one
    settings = settings.model_copy(update={"retrain_epochs": 1, "retrain_replay_size": 32,
                                           "gate_min_recent_gain": 1.0})
    store.write_corrections(corrections(tweets(120), "ann"))
    weights = ModelRegistry(settings.registry_dir).resolve("sentiment", "v1") / "model.safetensors"
    good = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(good[: len(good) // 2])  # the champion's weights broke: the round fails after it started

    with pytest.raises(Exception) as failure:  # whatever the loader raises is the reason
        run_retrain(settings, "sentiment", store)
    started, failed = store.fetch_model_events("sentiment")
    assert (started.kind, failed.kind) == (ModelEventKind.retrain_started, ModelEventKind.retrain_failed)
    assert failed.event_id == ModelEvent.round_end_id(started.event_id) and failed.model_version == "v1"
    assert failed.detail.startswith(f"{type(failure.value).__name__}: ")
    again = check_trigger(settings, "sentiment", store)
    assert again.new_corrections == 120 and again.trigger.retrain, again.trigger.reason

    # a round that started and never ended (its process was SIGKILLed) blocks others until its timeout
    dead = ModelEvent(kind=ModelEventKind.retrain_started, task="sentiment", model_version="v1",
                      created_at=datetime.now(UTC) - timedelta(minutes=30))
    store.write_model_events([dead])
    running = check_trigger(settings, "sentiment", store)
    assert not running.trigger.retrain and "has not ended yet" in running.trigger.reason
    assert run_retrain(settings, "sentiment", store).outcome is Outcome.skipped
    assert check_trigger(settings, "sentiment", store, force=True).trigger.retrain
    settings = settings.model_copy(update={"retrain_round_timeout_h": 0.25})
    assert check_trigger(settings, "sentiment", store).new_corrections == 120

    weights.write_bytes(good)
    report = run_retrain(settings, "sentiment", store)
    assert report.outcome is Outcome.refused and "no gain on 30 held-out recent corrections" in report.reason
    *_, started, refused = store.fetch_model_events("sentiment")
    assert refused.kind is ModelEventKind.gate_refused and refused.event_id == ModelEvent.round_end_id(started.event_id)
    after = check_trigger(settings, "sentiment", store)
    assert after.new_corrections == 0 and "no new corrections" in after.trigger.reason


def test_prior_correction_resamples_the_corrections_to_the_mix_the_champion_predicted(tmp_path, tiny_registry):
    settings = loop_settings(tmp_path, tiny_registry).model_copy(update={
        "retrain_prior_correction": True, "retrain_epochs": 1, "retrain_replay_size": 32, "gate_min_recent_gain": 1.0})
    stream = [ScoredMessage(id=f"s-{i}", kind=Kind.news, text=f"text {i}", model_name="m", model_version="v1",
                            label=label, probs={label: 0.9}, confidence=0.9, margin=0.8, entropy=0.3, content_hash=i,
                            event_time=T0, ingest_time=T0, scored_time=T0, src_partition=0, src_offset=i)
              for i, label in enumerate(["neutral"] * 7 + ["positive"] * 2)]
    # one embedded chdb per process: the feedback store shares this store's backend
    with closing(open_store(settings)) as scored_store:
        scored_store.write_scored(stream)
        store = FeedbackStore(scored_store)
        store.write_corrections(corrections(tweets(120), "ann"))
        report = run_retrain(settings, "sentiment", store)
    card = ModelRegistry(settings.registry_dir).card("sentiment", report.challenger)
    assert card.training_config["class_prior"] == pytest.approx({"negative": 1 / 12, "neutral": 8 / 12,
                                                                 "positive": 3 / 12})
    assert card.metrics.model_dump()["train_rows"] == 90 * 1 + 32  # as many correction rows, in another mix


def test_labels_inside_the_undo_window_are_neither_counted_nor_trained_on(loop):
    """A label the annotator can still take back (VIGIL_UI_UNDO_WINDOW_S) waits until it is final."""
    settings, store = loop
    now = datetime.now(UTC)
    oops, kept = (c.model_copy(update={"created_at": now - timedelta(seconds=15)})
                  for c in corrections(tweets(2, seed=9), "ann", start=5000))
    store.write_corrections(corrections(tweets(98), "ann") + [oops, kept])
    young = check_trigger(settings, "sentiment", store, now=lambda: now)
    assert young.new_corrections == 98
    assert {oops.correction_id, kept.correction_id}.isdisjoint(c.correction_id for c in young.corrections)

    store.write_corrections([oops.withdrawal(now - timedelta(seconds=5))])  # undo, 10 s after labelling
    final = check_trigger(settings, "sentiment", store, now=lambda: now + timedelta(seconds=settings.ui_undo_window_s))
    assert final.new_corrections == 99
    assert kept.correction_id in {c.correction_id for c in final.corrections}
    assert oops.correction_id not in {c.correction_id for c in final.corrections}


def _finished_round(store, started_at: datetime, read_through: datetime | None = None) -> None:
    figures = {} if read_through is None else {"corrections_through_ms": float(epoch_ms(read_through))}
    started = ModelEvent(kind=ModelEventKind.retrain_started, task="sentiment", model_version="v1",
                         figures=figures, created_at=started_at)
    store.write_model_events([started, ModelEvent(
        event_id=ModelEvent.round_end_id(started.event_id), kind=ModelEventKind.gate_refused, task="sentiment",
        model_version="v2", created_at=started_at + timedelta(minutes=20))])


def test_new_corrections_are_those_newer_than_the_last_round_read_on_the_labelling_clock(loop):
    """The round's start is on its worker's clock, the corrections' times on the labelling one: a
    round marks the newest correction it read, and only newer ones are new."""
    settings, store = loop
    now = datetime.now(UTC)
    read = corrections(tweets(50), "ann")  # at T0 (2 h ago) + 0..49 s
    store.write_corrections(read)
    _finished_round(store, now - timedelta(hours=1), read_through=read[-1].created_at)
    # labelled before the round, but stored only after it read (a producer retried it)
    late = corrections(tweets(1, seed=9), "ann", start=100)
    store.write_corrections(late)
    assert check_trigger(settings, "sentiment", store, now=lambda: now).new_corrections == 1

    # the labelling clock runs 5 min ahead of the worker's: a round starting at -40 min read a label
    # stamped -35 min; it is not new again after the round
    ahead = corrections(tweets(1, seed=11), "ann", start=200)[0].model_copy(
        update={"created_at": now - timedelta(minutes=35)})
    store.write_corrections([ahead])
    _finished_round(store, now - timedelta(minutes=40), read_through=ahead.created_at)
    assert check_trigger(settings, "sentiment", store, now=lambda: now).new_corrections == 0

    # a round recorded before rounds marked what they read counts from its start, as it did then
    _finished_round(store, now - timedelta(minutes=10))
    store.write_corrections([c.model_copy(update={"created_at": now - timedelta(minutes=m)})
                             for c, m in zip(corrections(tweets(2, seed=13), "ann", start=300), (15, 5), strict=True)])
    assert check_trigger(settings, "sentiment", store, now=lambda: now).new_corrections == 1


def _ready_for_drift(loop):
    """Retraining on drift, and 80 corrections the last round read plus one new: enough held out
    for the gate to judge a round."""
    settings, store = loop
    settings = settings.model_copy(update={"retrain_on_drift": True})
    now = datetime.now(UTC)
    _finished_round(store, now - timedelta(hours=1))
    store.write_corrections(corrections(tweets(80), "ann", start=100)
                            + [c.model_copy(update={"created_at": now - timedelta(minutes=5)})
                               for c in corrections(tweets(1), "ann")])
    return settings, store, now


def test_only_drift_that_the_champion_got_worse_triggers_a_retrain(loop):
    settings, store, now = _ready_for_drift(loop)
    monitor = DriftMonitor(clock=lambda: now - timedelta(minutes=30))
    better = [e for i in range(600)  # the audited error rate falls 40% -> 0%
              for e in monitor.observe_audit("sentiment", "v1", wrong=i < 300 and i % 5 < 2, when=now)]
    assert better and all("fell" in e.detail for e in better)
    replaced = ModelEvent(kind=ModelEventKind.drift, task="sentiment", model_version="v0", created_at=now - timedelta(
        minutes=30), detail="v0: mean confidence fell", figures={"confidence_before": 0.9, "confidence_after": 0.6})
    store.write_model_events([*better, replaced])
    quiet = check_trigger(settings, "sentiment", store, now=lambda: now)
    assert not quiet.trigger.retrain and "no drift" in quiet.trigger.reason

    monitor = DriftMonitor(clock=lambda: now - timedelta(minutes=20))
    worse = [e for i in range(600)  # and rises 0% -> 40%
             for e in monitor.observe_audit("sentiment", "v1", wrong=i >= 300 and i % 5 < 2, when=now)]
    assert worse and all("rose" in e.detail for e in worse)
    store.write_model_events(worse)
    fired = check_trigger(settings, "sentiment", store, now=lambda: now)
    assert fired.trigger.retrain and f"{len(worse)} drift event(s)" in fired.trigger.reason


def test_drift_that_withdrawn_audit_labels_alone_raised_triggers_no_retrain(loop):
    """An annotator marks 40 audit items wrong in a row and undoes them all: the rise they raised is
    recorded, and so is its withdrawal, after which it triggers nothing."""
    settings, store, now = _ready_for_drift(loop)
    rng = random.Random(3)
    burst = [_audit_pair(1000 + i, wrong=True) for i in range(40)]
    monitor = DriftMonitor(clock=lambda: now - timedelta(minutes=30))
    raised = [e for c, item in [_audit_pair(i, wrong=rng.random() < 0.1) for i in range(1000)] + burst
              for e in monitor.observe_correction(c, item)]
    assert raised and all("rose" in e.detail for e in raised)
    store.write_model_events(raised)
    assert check_trigger(settings, "sentiment", store, now=lambda: now).trigger.retrain

    taken_back = [e for c, item in reversed(burst) for e in monitor.observe_correction(c.withdrawal(now), item)]
    store.write_model_events(taken_back)
    quiet = check_trigger(settings, "sentiment", store, now=lambda: now)
    assert not quiet.trigger.retrain and "no drift" in quiet.trigger.reason
    assert {e.kind for e in store.fetch_model_events("sentiment")} >= {ModelEventKind.drift, ModelEventKind.drift_withdrawn}
