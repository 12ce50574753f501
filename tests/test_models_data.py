"""The validation split and the data fingerprint, on the real bundled corpora."""

from collections import Counter
from datetime import UTC, datetime

import pytest

from models.data import SplitConfig, duplicate_key, fingerprint, stratified_split
from models.registry import ModelCard
from models.retrain import RetrainError, data_origin, gold_set
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
        # 4 groups of copies are labelled two ways; each counts towards one label, the other's rows with it
        assert abs(val[key] - 0.1 * n) <= 2.5, key


def test_fingerprint_tracks_rows_and_split_config():
    rows = get_task("triage").load(DATA)
    cfg = SplitConfig(0.1, 13)
    train = stratified_split(rows, cfg).train
    fp = fingerprint(train, cfg, ["banking77"])
    assert fp.startswith("sha256:") and fp == fingerprint(list(train), cfg, ["banking77"])
    assert fp != fingerprint(train[:-1], cfg, ["banking77"])
    assert fp != fingerprint(train, SplitConfig(0.1, 14), ["banking77"])


def test_no_text_the_model_reads_alike_is_validated_and_trained_on():
    """The bundled tweets repeat headlines under new t.co links (and in other case or spacing); the
    sentiment model reads them as one text, so a copy on each side validates on a training row."""
    rows = get_task("sentiment").load(DATA)
    split = stratified_split(rows, SplitConfig())
    trained = {duplicate_key(r.text) for r in split.train}
    assert [r.text for r in split.val if duplicate_key(r.text) in trained] == []
    wires = [r for r in rows if duplicate_key(r.text) == "$wires: on the wires"]
    assert len(wires) == 9 and len({r in split.val for r in wires}) == 1
    assert duplicate_key("Stocks  RALLY https://t.co/abc") == duplicate_key("stocks rally www.x.com/y") == "stocks rally"


def _card(training_config: dict) -> ModelCard:
    return ModelCard(task="sentiment", version="v1", model_name="m", labels=["negative", "neutral", "positive"],
                     metrics=None, data_fingerprint="sha256:0", base_encoder="e", max_length=64,
                     training_config=training_config, created_at=datetime.now(UTC))


def test_a_version_trained_before_duplicates_were_grouped_keeps_the_gold_set_it_was_split_around():
    rows = get_task("sentiment").load(DATA, ("financial_phrasebank",))
    before = _card({"sources": ["financial_phrasebank"], "val_fraction": 0.1, "split_seed": 13})
    assert data_origin(before).split == SplitConfig(0.1, 13, group_duplicates=False)
    assert gold_set(before, DATA).rows == stratified_split(rows, SplitConfig(0.1, 13, group_duplicates=False)).val
    grouped = _card({"sources": ["financial_phrasebank"], "val_fraction": 0.1, "split_seed": 13,
                     "group_duplicates": True})
    assert gold_set(grouped, DATA).rows == stratified_split(rows, SplitConfig(0.1, 13)).val


def test_gold_rows_whose_text_people_corrected_are_left_out_and_a_gold_set_left_empty_is_refused():
    card = _card({"sources": ["financial_phrasebank"], "val_fraction": 0.1, "split_seed": 13,
                  "group_duplicates": True})
    gold = gold_set(card, DATA, cap=5).rows
    fewer = gold_set(card, DATA, cap=5, corrected=[f"{gold[0].text.upper()} https://t.co/x"])
    assert fewer.rows == gold[1:] and "1 corrected texts left out" in fewer.description
    with pytest.raises(RetrainError, match="VIGIL_GOLD_CAP"):
        gold_set(card, DATA, cap=5, corrected=[r.text for r in gold])
