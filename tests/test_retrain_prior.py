"""Prior correction of the corrections' class mix before fine-tuning: the stream's mix estimate
(feedback.retrain_job.stream_prior) and the resampling to it (models.retrain.prior_resample)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback.retrain_job import stream_prior
from models.retrain import prior_resample

LABELS = ("negative", "neutral", "positive")


def test_queue_mix_is_resampled_to_the_stream_prior():
    # the active queue's mix on seed 0 of the lift benchmark: fewer neutral than the stream's 65%
    labels = ["neutral"] * 210 + ["positive"] * 95 + ["negative"] * 70
    got = prior_resample(labels, {"negative": 0.15, "neutral": 0.65, "positive": 0.20}, 1125, seed=0)
    mix = Counter(labels[i] for i in got)
    assert mix == {"neutral": 731, "positive": 225, "negative": 169}
    # whole copies first: every correction stays in, each neutral one 3 or 4 times (731 = 3 x 210 + 101)
    assert set(got) == set(range(len(labels)))
    assert {Counter(got)[i] for i in range(210)} == {3, 4}


def test_resampling_is_seeded():
    labels = ["neutral"] * 7 + ["positive"] * 5 + ["negative"] * 3
    prior = {"negative": 0.2, "neutral": 0.5, "positive": 0.3}
    assert prior_resample(labels, prior, 40, seed=3) == prior_resample(labels, prior, 40, seed=3)
    assert prior_resample(labels, prior, 40, seed=3) != prior_resample(labels, prior, 40, seed=4)


def test_a_prior_without_any_corrected_class_is_refused():
    with pytest.raises(ValueError, match="no weight"):
        prior_resample(["neutral", "neutral"], {"positive": 1.0}, 4, seed=0)


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=3, max_size=3).filter(lambda c: sum(c) > 0),
    weights=st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3),
    per_row=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_resampled_mix_matches_the_prior_over_the_corrected_classes(counts, weights, per_row, seed):
    labels = [y for y, c in zip(LABELS, counts, strict=True) for _ in range(c)]
    prior = dict(zip(LABELS, weights, strict=True))
    n = len(labels) * per_row
    got = prior_resample(labels, prior, n, seed)

    assert len(got) == n and all(0 <= i < len(labels) for i in got)
    mix = Counter(labels[i] for i in got)
    present = [y for y, c in zip(LABELS, counts, strict=True) if c]
    mass = sum(prior[y] for y in present)
    for y in present:
        # the prior renormalised over the corrected classes, to within one row of rounding
        assert abs(mix[y] - n * prior[y] / mass) < 1
        # stratified: each row of a class is drawn k or k+1 times, never left out when k >= 1
        drawn = [Counter(got)[i] for i, label in enumerate(labels) if label == y]
        assert max(drawn) - min(drawn) <= 1


def test_stream_prior_is_the_champions_predicted_mix_with_one_pseudo_count_per_label():
    assert stream_prior({"neutral": 6, "positive": 2, "spam": 5}, LABELS) == {
        "negative": 1 / 11, "neutral": 7 / 11, "positive": 3 / 11}
    assert stream_prior({}, LABELS) is None
