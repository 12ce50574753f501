"""The gate and the annotator screen on hand-built label sets (pure: no model needed here; the
real-model gate runs in tests/test_feedback_retrain.py)."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from feedback.contracts import Correction, CorrectionSource
from feedback.gate import (
    Evaluation,
    GateConfig,
    ScreenConfig,
    accuracy,
    balanced_agreement,
    consensus,
    judge,
    latest_per_annotator,
    screen_annotators,
)
from feedback.retrain_job import split_recent
from feedback.selection import fingerprint

T0 = datetime(2026, 3, 1, tzinfo=UTC)
LABELS = ("negative", "neutral", "positive")
FLIP = {"negative": "positive", "positive": "negative", "neutral": "neutral"}
SCREEN = ScreenConfig(min_agreement=0.5, min_evidence=5, confident=0.9)
GATE = GateConfig(max_gold_drop=0.01, min_recent_gain=0.0, min_recent=10)


def corr(msg: str, annotator: str, label: str, minute: int = 0) -> Correction:
    return Correction(
        correction_id=Correction.make_id("sentiment", msg, annotator), task="sentiment", message_id=msg,
        text=f"text of {msg}", annotator=annotator, human_label=label, source=CorrectionSource.queue,
        created_at=T0 + timedelta(minutes=minute),
    )


def truth(i: int) -> str:
    return LABELS[i % 3]


def poisoned_set(n: int = 60, seed: int = 1):
    """Honest annotators ann/bob label correctly; mallory flips negative<->positive. Most messages
    get two or three of them, so all three share items; every fourth only mallory's label."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        who_labels = ["mallory"] if i % 4 == 0 else rng.sample(["ann", "bob", "mallory"], rng.choice([2, 3]))
        for who in who_labels:
            label = FLIP[truth(i)] if who == "mallory" else truth(i)
            out.append(corr(f"m{i}", who, label, minute=i))
    return out


def test_flipping_annotator_is_dropped_on_shared_items():
    cs = poisoned_set()
    screened = screen_annotators(cs, champion={}, cfg=SCREEN)
    assert set(screened.dropped) == {"mallory"}
    assert "shared items" in screened.dropped["mallory"]
    assert {c.annotator for c in screened.kept} == {"ann", "bob"}
    # What survives to training is correct wherever a label survives.
    labels = consensus(screened.kept)
    assert labels and all(label == truth(int(c.message_id[1:])) for c, label in labels)


def test_without_the_screen_poison_reaches_the_labels():
    """The control: the same set unscreened puts wrong labels into training (so the screen is what removed them)."""
    labels = consensus(poisoned_set())
    wrong = [c for c, label in labels if label != truth(int(c.message_id[1:]))]
    assert wrong


def test_flipper_on_neutral_heavy_data_is_dropped_though_raw_agreement_is_high():
    """65% neutral, like the financial tweets: a neg<->pos flipper still agrees on 65% of items raw;
    balanced agreement sees through it, while an honest annotator with 15% slips is kept."""
    rng = random.Random(3)
    true = ["neutral" if rng.random() < 0.65 else rng.choice(["negative", "positive"]) for _ in range(200)]
    cs = []
    for i, y in enumerate(true):
        cs += [corr(f"m{i}", "ann", y, i), corr(f"m{i}", "bob", y, i)]
        cs.append(corr(f"m{i}", "mallory", FLIP[y], i))
        cs.append(corr(f"m{i}", "sloppy", y if rng.random() < 0.85 else rng.choice(LABELS), i))
    screened = screen_annotators(cs, {}, SCREEN)
    assert set(screened.dropped) == {"mallory"}
    report = {r.annotator: r for r in screened.reports}
    assert report["mallory"].agree_shared < 0.5 < report["sloppy"].agree_shared


def test_balanced_agreement():
    assert balanced_agreement(["a", "b", "a"], ["a", "b", "a"]) == 1.0
    assert balanced_agreement(["a", "a"], ["a", "a"]) == 1.0  # one reference class: still meaningful
    assert balanced_agreement(["a", "b"], ["b", "a"]) == 0.0
    # 9 of 10 'n' right and the one 'p' wrong: raw 0.9, balanced 0.45
    assert balanced_agreement(["n"] * 9 + ["x", "x"], ["n"] * 10 + ["p"]) == pytest.approx((0.9 + 0) / 2)
    with pytest.raises(ValueError):
        balanced_agreement([], [])


def test_honest_annotator_vs_a_champion_confident_about_one_class_is_kept():
    cs = [corr(f"m{i}", "ann", "neutral", i) for i in range(8)]
    screened = screen_annotators(cs, {f"m{i}": ("neutral", 0.95) for i in range(8)}, SCREEN)
    assert screened.dropped == {}


def test_lone_flipper_is_caught_by_the_champions_confident_predictions():
    cs = [corr(f"m{i}", "mallory", FLIP[truth(i)], i) for i in range(30) if truth(i) != "neutral"]
    champion = {f"m{i}": (truth(i), 0.97) for i in range(30)}
    screened = screen_annotators(cs, champion, SCREEN)
    assert "confident" in screened.dropped["mallory"]
    assert screened.kept == []


def test_a_flipper_sharing_every_item_with_one_honest_annotator_takes_only_itself_down():
    """Judged against each other the two disagree alike, and both were dropped (nothing left to
    train on); the champion's confident predictions say which one is right, so they are heard first."""
    cs = [corr(f"m{i}", who, label, i) for i in range(30)
          for who, label in (("ann", truth(i)), ("mallory", FLIP[truth(i)]))]
    screened = screen_annotators(cs, {f"m{i}": (truth(i), 0.97) for i in range(30)}, SCREEN)
    assert set(screened.dropped) == {"mallory"} and "confident" in screened.dropped["mallory"]
    assert len(consensus(screened.kept)) == 30
    # With no confident prediction to tell them apart, neither can be trusted: both go.
    assert set(screen_annotators(cs, {}, SCREEN).dropped) == {"ann", "mallory"}


def test_annotator_fixing_uncertain_mistakes_is_kept():
    """The champion is wrong but unsure on every item: correcting it is the job, not noise."""
    cs = [corr(f"m{i}", "ann", truth(i), i) for i in range(30)]
    champion = {f"m{i}": (FLIP[truth(i)] if truth(i) != "neutral" else "positive", 0.55) for i in range(30)}
    screened = screen_annotators(cs, champion, SCREEN)
    assert screened.dropped == {}
    assert len(screened.kept) == 30


def test_too_little_evidence_keeps_an_annotator():
    cs = [corr("m1", "ann", "negative"), corr("m1", "mallory", "positive"), corr("m1", "bob", "negative")]
    screened = screen_annotators(cs, {}, SCREEN)
    assert screened.dropped == {}
    (report,) = [r for r in screened.reports if r.annotator == "mallory"]
    assert report.shared == 1 and report.agree_shared == 0.0


def test_latest_label_per_annotator_counts_and_ties_are_dropped():
    cs = [corr("m1", "ann", "negative", 0), corr("m1", "ann", "positive", 5), corr("m2", "ann", "neutral", 1),
          corr("m2", "bob", "positive", 2)]
    assert [c.human_label for c in latest_per_annotator(cs) if c.message_id == "m1"] == ["positive"]
    assert [(c.message_id, label) for c, label in consensus(cs)] == [("m1", "positive")]


def spelled(i: int) -> str:
    """A text per number that near-duplicate collapse keeps apart (it ignores digits)."""
    return " ".join("zero one two three four five six seven eight nine".split()[int(d)] for d in str(i))


def labelled(msg: str, annotator: str, label: str, minute: int, text: str) -> Correction:
    return corr(msg, annotator, label, minute).model_copy(update={"text": text})


def test_a_message_is_dated_by_its_first_label_so_a_later_confirmation_does_not_hold_it_out():
    """Round 1 trained on m0..m29; when bob confirms ten of them after n0..n9 were labelled, they
    stay in the training part of round 2 and only messages no model saw are held out."""
    first = [labelled(f"m{i}", "alice", truth(i), i, f"tweet {spelled(i)}") for i in range(40)]
    trained_before = {c.message_id for c, _ in split_recent(consensus(first), 0.25)[0]}
    second = (first + [labelled(f"n{i}", "alice", "neutral", 120 + i, f"news {spelled(i)}") for i in range(10)]
              + [labelled(f"m{i}", "bob", truth(i), 140 + i, f"tweet {spelled(i)}") for i in range(10)])
    _, held_out = split_recent(consensus(second), 0.25)
    assert len(held_out) == 12
    assert not trained_before & {c.message_id for c, _ in held_out}


def test_after_labels_are_withdrawn_the_held_out_part_leaves_out_what_the_champion_trained_on():
    """Round 1 trained the champion on m0..m29 and held out m30..m39; then m30..m37 are withdrawn (a
    responder turned an alert's verdict to false) and n0..n3 come. The newest quarter of round 2's 36
    items reaches back to m27..m29: only the champion's training texts keep them out."""
    first = [labelled(f"m{i}", "alice", truth(i), i, f"tweet {spelled(i)}") for i in range(40)]
    trained_before = split_recent(consensus(first), 0.25)[0]
    second = ([c for c in first if c.message_id not in {f"m{i}" for i in range(30, 38)}]
              + [labelled(f"n{i}", "alice", "neutral", 120 + i, f"news {spelled(i)}") for i in range(4)])
    champion = {fingerprint(c.text) for c, _ in trained_before}
    train, held_out = split_recent(consensus(second), 0.25, champion)
    assert [c.message_id for c, _ in held_out] == ["m38", "m39", "n0", "n1", "n2", "n3"]
    assert [c.message_id for c, _ in train] == [f"m{i}" for i in range(30)]


def test_a_text_in_the_training_part_is_not_held_out_under_another_message_id():
    cs = [labelled(f"m{i}", "ann", truth(i), i, f"tweet {spelled(i)}") for i in range(12)]
    # retweets of m0..m3 labelled later under their own ids (case and spacing differ)
    cs += [labelled(f"rt{i}", "ann", truth(i), 60 + i, f"TWEET  {spelled(i)}") for i in range(4)]
    train, held_out = split_recent(consensus(cs), 0.25)
    assert [c.message_id for c, _ in train] == [f"m{i}" for i in range(12)]
    assert held_out == []


def _eval(true, champ_acc_idx, chall_acc_idx):
    """Predictions right exactly on the given index sets."""
    return Evaluation(true, [t if i in champ_acc_idx else FLIP.get(t, "x") if t != "neutral" else "positive"
                             for i, t in enumerate(true)],
                      [t if i in chall_acc_idx else "positive" if t != "positive" else "negative"
                       for i, t in enumerate(true)])


GOLD_TRUE = [truth(i) for i in range(200)]
RECENT_TRUE = [truth(i) for i in range(40)]


def test_better_challenger_is_promoted():
    gold = _eval(GOLD_TRUE, set(range(160)), set(range(159)))  # 0.80 -> 0.795: within 0.01
    recent = _eval(RECENT_TRUE, set(range(20)), set(range(30)))  # 0.50 -> 0.75
    d = judge(gold, recent, GATE)
    assert d.promote, d.reasons
    assert d.figures["gold_champion"] == 0.8 and d.figures["gold_challenger"] == 0.795
    assert d.figures["recent_challenger"] == 0.75


@pytest.mark.parametrize("n", [100, 200, 300, 1000])
def test_a_gold_drop_of_exactly_the_tolerance_passes_and_a_gain_of_exactly_the_minimum_does_not(n):
    """0.90 -> 0.89 came out as a drop of 0.010000000000000009, refused as over 0.01, while
    0.57 -> 0.56 passed: the verdict on an exact one-point drop followed the float rounding."""
    true = [truth(i) for i in range(n)]
    cfg = GateConfig(max_gold_drop=0.01, min_recent_gain=0.1, min_recent=10)
    recent_true = RECENT_TRUE[:10]
    for right in range(n // 100, n + 1, n // 100):  # every whole-point accuracy
        gold = _eval(true, set(range(right)), set(range(right - n // 100)))
        recent = _eval(recent_true, set(range(7)), set(range(8)))  # a gain of exactly 0.1: not more
        d = judge(gold, recent, cfg)
        assert [r for r in d.reasons if "gold" in r or "gain" in r] == [d.reasons[0]], (right, d.reasons)
        assert "no gain" in d.reasons[0], (right, d.reasons)  # refused for the gain alone


def test_worse_challenger_is_refused_on_gold_even_if_better_on_recent():
    gold = _eval(GOLD_TRUE, set(range(160)), set(range(150)))  # 0.80 -> 0.75
    recent = _eval(RECENT_TRUE, set(range(20)), set(range(40)))
    d = judge(gold, recent, GATE)
    assert not d.promote
    assert len(d.reasons) == 1 and "gold accuracy falls 0.8000 -> 0.7500" in d.reasons[0]


def test_no_gain_on_recent_is_refused():
    gold = _eval(GOLD_TRUE, set(range(160)), set(range(170)))
    recent = _eval(RECENT_TRUE, set(range(30)), set(range(30)))
    d = judge(gold, recent, GATE)
    assert not d.promote and "no gain" in d.summary


def test_too_few_recent_corrections_is_refused():
    gold = _eval(GOLD_TRUE, set(range(160)), set(range(170)))
    recent = _eval(RECENT_TRUE[:5], set(), set(range(5)))
    d = judge(gold, recent, GATE)
    assert not d.promote and "only 5 held-out" in d.summary


def test_both_failures_are_reported():
    gold = _eval(GOLD_TRUE, set(range(160)), set(range(100)))
    recent = _eval(RECENT_TRUE, set(range(30)), set(range(10)))
    assert len(judge(gold, recent, GATE).reasons) == 2


def test_accuracy_checks_lengths_and_empty_gold():
    with pytest.raises(ValueError):
        accuracy(["a"], [])
    with pytest.raises(ValueError, match="non-empty gold"):
        judge(Evaluation([], [], []), Evaluation([], [], []), GATE)
