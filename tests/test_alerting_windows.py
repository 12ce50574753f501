"""Event-time hopping windows: figures, lateness, eviction, and the counting property."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.alerting.windows import HoppingWindows, WindowSpec, WindowSpecError

T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def _add(w: HoppingWindows, key: str, t: datetime, score: float = 0.0, label: str = "neutral", mid: str | None = None):
    return w.add(key, t, label=label, score=score, message_id=mid or f"{key}@{t.isoformat()}", text="x")


def test_figures_of_a_closed_window():
    w = HoppingWindows(WindowSpec(size=3 * MIN, step=MIN, lateness=timedelta(0), top_k=2))
    closed = []
    closed += _add(w, "A", T0 + timedelta(seconds=10), -0.8, "negative", "a1").closed
    closed += _add(w, "A", T0 + timedelta(seconds=20), 0.6, "positive", "a2").closed
    closed += _add(w, "A", T0 + timedelta(seconds=70), -0.4, "negative", "a3").closed  # closes 08:01
    closed += _add(w, "B", T0 + timedelta(seconds=80), 0.0, "neutral", "b1").closed
    closed += _add(w, "A", T0 + 3 * MIN, 0.0).closed  # closes the windows ending 08:02, 08:03
    by = {(f.key, f.end): f for f in closed}
    assert sorted(by) == [("A", T0 + MIN), ("A", T0 + 2 * MIN), ("A", T0 + 3 * MIN), ("B", T0 + 2 * MIN), ("B", T0 + 3 * MIN)]
    a = by[("A", T0 + 3 * MIN)]
    assert (a.start, a.volume, a.counts) == (T0, 3, {"negative": 2, "positive": 1})
    assert a.mean_score == pytest.approx((-0.8 + 0.6 - 0.4) / 3)
    assert [m.id for m in a.top["lowest"]] == ["a1", "a3"]  # the two most negative, most negative first
    assert [m.id for m in a.top["highest"]] == ["a2", "a3"]  # and the two most positive, most positive first
    assert a.share("negative") == pytest.approx(2 / 3)
    assert [m.id for m in by[("A", T0 + MIN)].top["lowest"]] == ["a1", "a2"]


def test_late_events_inside_lateness_count_and_older_ones_are_refused():
    w = HoppingWindows(WindowSpec(size=2 * MIN, step=MIN, lateness=2 * MIN))
    _add(w, "A", T0 + 5 * MIN)  # watermark 08:05: events before 08:03 are too late
    inside = _add(w, "A", T0 + 3 * MIN + timedelta(seconds=1))
    edge = _add(w, "A", T0 + 3 * MIN)
    outside = _add(w, "A", T0 + 3 * MIN - timedelta(seconds=1))
    assert (inside.accepted, edge.accepted, outside.accepted) == (True, True, False)
    closed = w.advance(T0 + 10 * MIN)
    vol = {f.end: f.volume for f in closed}
    assert vol[T0 + 4 * MIN] == 2 and vol[T0 + 5 * MIN] == 2  # both late ones counted in each window
    assert vol[T0 + 6 * MIN] == 1  # the 08:05 event; the refused 08:02:59 one is nowhere
    assert T0 + 3 * MIN not in vol


def test_a_closed_window_is_emitted_once_and_memory_is_evicted():
    w = HoppingWindows(WindowSpec(size=15 * MIN, step=MIN, lateness=2 * MIN))
    ends = []
    for i in range(24 * 60):  # a day, one event per minute for each of 3 keys
        for key in "ABC":
            ends += [(f.key, f.end) for f in _add(w, key, T0 + i * MIN).closed]
    assert len(ends) == len(set(ends))
    # panes alive: at most the window plus lateness (plus the pane being filled), per key
    assert w.live_panes <= 3 * (15 + 2 + 1)


def test_a_long_quiet_gap_is_skipped_not_walked():
    w = HoppingWindows(WindowSpec(size=15 * MIN, step=MIN))
    _add(w, "A", T0)
    closed = _add(w, "A", T0 + timedelta(days=365)).closed
    assert [f.end for f in closed] == [T0 + (i + 1) * MIN for i in range(15)]
    assert w.live_panes == 1


@pytest.mark.parametrize(
    "size, step, lateness",
    [(10 * MIN, 3 * MIN, timedelta(0)), (MIN, timedelta(0), timedelta(0)), (MIN, MIN, -MIN)],
)
def test_bad_geometry_is_refused(size, step, lateness):
    with pytest.raises(WindowSpecError):
        WindowSpec(size=size, step=step, lateness=lateness)


def test_naive_event_time_is_refused():
    w = HoppingWindows(WindowSpec(size=MIN, step=MIN))
    with pytest.raises(ValueError, match="no timezone"):
        _add(w, "A", datetime(2025, 1, 1))


events = st.lists(
    st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(min_value=0, max_value=3 * 3600)), min_size=1, max_size=150
)


@settings(max_examples=200, deadline=None)
@given(events=events, size=st.integers(1, 6), step_s=st.sampled_from([30, 60, 120]), lateness_s=st.integers(0, 600))
def test_window_counts_equal_the_accepted_events_inside_them(events, size, step_s, lateness_s):
    spec = WindowSpec(size=size * timedelta(seconds=step_s), step=timedelta(seconds=step_s), lateness=timedelta(seconds=lateness_s))
    w = HoppingWindows(spec)
    accepted: list[tuple[str, datetime]] = []
    figures = []
    high = None
    for n, (key, offset) in enumerate(events):
        t = T0 + timedelta(seconds=offset)
        added = w.add(key, t, label="neutral", score=0.0, message_id=str(n), text="x")
        expect = high is None or t >= high - spec.lateness
        assert added.accepted == expect
        high = t if high is None else max(high, t)
        if added.accepted:
            accepted.append((key, t))
        figures += added.closed
    figures += w.advance(T0 + timedelta(days=1))

    seen = {(f.key, f.end) for f in figures}
    assert len(seen) == len(figures)  # every window once
    for f in figures:
        assert f.volume == sum(1 for k, t in accepted if k == f.key and f.start <= t < f.end)
    # every window holding an accepted event was emitted, and each event is in size windows
    per_event = [sum(1 for f in figures if f.key == k and f.start <= t < f.end) for k, t in accepted]
    assert per_event == [size] * len(accepted)


def test_a_checkpoint_that_kept_one_side_restores_it_and_stands_in_for_the_other():
    """Checkpoints from before windows kept both the lowest and the highest scores hold one list
    per pane; its messages are all the restored pane has for either side."""
    spec = WindowSpec(size=2 * MIN, step=MIN, top_k=2)
    w = HoppingWindows(spec)
    for n, score in enumerate((-0.8, 0.6, -0.4)):
        _add(w, "A", T0 + timedelta(seconds=10 * n), score, mid=f"a{n}")
    state = w.to_state()
    old = state | {"panes": [row[:5] + [row[5]["lowest"]] + row[6:] for row in state["panes"]]}
    (fig,) = HoppingWindows.from_state(spec, old, kept="lowest").advance(T0 + MIN)
    assert [m.id for m in fig.top["lowest"]] == ["a0", "a2"]
    assert [m.id for m in fig.top["highest"]] == ["a2", "a0"]
    (fig,) = HoppingWindows.from_state(spec, state, kept="lowest").advance(T0 + MIN)
    assert [m.id for m in fig.top["highest"]] == ["a1", "a2"]
