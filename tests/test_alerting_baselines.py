"""Baselines: the same exponentially weighted mean and variance as river's, silent windows
learned as zeros, and a checkpointed baseline that comes back bit for bit."""

from __future__ import annotations

import random

import pytest
from river.stats import EWMean, EWVar

from streams.alerting.baselines import Baseline, BaselineSpec


@pytest.mark.parametrize("fading_factor", [0.02, 0.3, 1.0])
def test_the_statistic_is_rivers(fading_factor):
    rng = random.Random(fading_factor)
    spec = BaselineSpec(fading_factor, warmup=1)
    ours, mean, var = Baseline(spec), EWMean(fading_factor), EWVar(fading_factor)
    for _ in range(500):
        x = rng.gauss(0.3, 0.4)
        ours.update(x)
        mean.update(x)
        var.update(x)
        assert ours.expected == pytest.approx(mean.get(), rel=1e-9, abs=1e-12)
        assert ours.variance == pytest.approx(var.get(), rel=1e-9, abs=1e-12)


def test_silent_windows_are_learned_as_that_value():
    spec = BaselineSpec(0.1, warmup=1)
    many, one_by_one = Baseline(spec), Baseline(spec)
    many.update_many(0.0, 5)
    many.update(4.0)
    for x in (0.0, 0.0, 0.0, 0.0, 0.0, 4.0):
        one_by_one.update(x)
    assert many.to_state() == one_by_one.to_state()


def test_a_restored_baseline_goes_on_exactly_as_the_original():
    rng = random.Random(7)
    spec = BaselineSpec(0.05, warmup=3)
    original = Baseline(spec)
    for _ in range(200):
        original.update(rng.random())
    restored = Baseline.from_state(spec, original.to_state())
    for _ in range(200):
        x = rng.random()
        assert restored.z(x) == original.z(x)
        original.update(x)
        restored.update(x)
    assert restored.to_state() == original.to_state()
