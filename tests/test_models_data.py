"""The validation split and the data fingerprint, on the real bundled corpora."""

from collections import Counter

from models.data import SplitConfig, fingerprint, stratified_split
from models.tasks import get_task
from streams.settings import REPO_ROOT

DATA = REPO_ROOT / "data"


def test_split_is_deterministic_and_independent_of_row_order():
    rows = get_task("sentiment").load(DATA)
    a = stratified_split(rows, SplitConfig(0.1, 7))
    b = stratified_split(list(reversed(rows)), SplitConfig(0.1, 7))
    assert a.train == b.train and a.val == b.val
    c = stratified_split(rows, SplitConfig(0.1, 8))
    assert {r.text for r in c.val} != {r.text for r in a.val}


def test_split_is_stratified_and_disjoint():
    rows = get_task("triage").load(DATA)
    split = stratified_split(rows, SplitConfig(0.1, 13))
    assert len(split.train) + len(split.val) == len(rows)
    assert Counter(split.train) + Counter(split.val) == Counter(rows)
    total, val = Counter(r.label for r in rows), Counter(r.label for r in split.val)
    assert set(val) == set(total)  # every one of the 77 intents is validated
    for label, n in total.items():
        assert abs(val[label] - 0.1 * n) <= 0.5, label


def test_sentiment_split_stratifies_per_corpus():
    rows = get_task("sentiment").load(DATA)
    split = stratified_split(rows, SplitConfig(0.1, 13))
    total = Counter((r.source, r.label) for r in rows)
    val = Counter((r.source, r.label) for r in split.val)
    assert len(total) == 6
    for key, n in total.items():
        assert abs(val[key] - 0.1 * n) <= 0.5, key


def test_fingerprint_tracks_rows_and_split_config():
    rows = get_task("triage").load(DATA)
    cfg = SplitConfig(0.1, 13)
    train = stratified_split(rows, cfg).train
    fp = fingerprint(train, cfg, ["banking77"])
    assert fp.startswith("sha256:") and fp == fingerprint(list(train), cfg, ["banking77"])
    assert fp != fingerprint(train[:-1], cfg, ["banking77"])
    assert fp != fingerprint(train, SplitConfig(0.1, 14), ["banking77"])
