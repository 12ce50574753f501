"""The lease book: order, exclusivity, expiry, label/skip/undo (pure, explicit clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback.contracts import ItemState, LabelRequest, SelectionReason
from feedback.leases import (
    LeaseBook,
    LeaseExpired,
    NothingToUndo,
    NotLeasedToYou,
    UnknownItem,
    priority,
)

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def request(n: int, reasons: list[SelectionReason], *, minutes: int = 0, task: str = "sentiment") -> LabelRequest:
    mid = f"m{n}"
    return LabelRequest(
        item_id=LabelRequest.make_id(task, mid, "v1"), task=task, message_id=mid, text=f"text {n}",
        model_name="minilm", model_version="v1", model_label="neutral",
        probs={"negative": 0.3, "neutral": 0.4, "positive": 0.3}, confidence=0.4, margin=0.1, entropy=1.0,
        reasons=reasons, event_time=T0, selected_at=T0 + timedelta(minutes=minutes),
    )


def book_with(*requests: LabelRequest, lease_s: float = 60, undo_window_s: float = 30) -> LeaseBook:
    book = LeaseBook(lease_s=lease_s, undo_window_s=undo_window_s)
    for r in requests:
        book.add(r, T0)
    return book


def test_alert_and_disagreement_before_uncertain_before_audit_oldest_first() -> None:
    audit_old = request(1, [SelectionReason.audit], minutes=0)
    uncertain_new = request(2, [SelectionReason.uncertain], minutes=5)
    uncertain_old = request(3, [SelectionReason.uncertain], minutes=1)
    review = request(4, [SelectionReason.alert_review], minutes=9)
    disagree = request(5, [SelectionReason.disagreement, SelectionReason.audit], minutes=8)
    book = book_with(audit_old, uncertain_new, uncertain_old, review, disagree)
    now = T0 + timedelta(minutes=10)
    order = []
    for i in range(5):
        item = book.lease(f"a{i}", now).item
        assert item is not None
        order.append(item.request.message_id)
    assert order == ["m5", "m4", "m3", "m2", "m1"]
    assert book.lease("a9", now).item is None
    assert priority(disagree) == 0 and priority(audit_old) == 2


def test_an_annotator_holds_one_lease_and_gets_it_back() -> None:
    book = book_with(request(1, [SelectionReason.uncertain]), request(2, [SelectionReason.uncertain], minutes=1))
    first = book.lease("ann", T0).item
    again = book.lease("ann", T0 + timedelta(seconds=10)).item
    assert first is not None and again is not None
    assert again.request.item_id == first.request.item_id
    assert again.lease_expires == T0 + timedelta(seconds=70)  # renewed
    assert book.counts(T0) == {"open": 1, "leased": 1, "labelled": 0, "skipped": 0}


def test_two_annotators_never_get_the_same_item() -> None:
    book = book_with(request(1, [SelectionReason.uncertain]), request(2, [SelectionReason.audit]))
    a = book.lease("alice", T0).item
    b = book.lease("bob", T0).item
    assert a is not None and b is not None
    assert a.request.item_id != b.request.item_id
    assert book.lease("carol", T0).item is None
    with pytest.raises(NotLeasedToYou, match="leased to alice"):
        book.label(a.request.item_id, "bob", T0)
    assert book.check_lease(a.request.item_id, "alice", T0) == a  # a check moves nothing
    with pytest.raises(NotLeasedToYou):
        book.check_lease(a.request.item_id, "bob", T0)
    assert book.get(a.request.item_id) == a


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["lease", "label", "skip"]),
                          st.integers(0, 200)), max_size=60))
def test_no_item_is_ever_leased_to_two_annotators(ops: list[tuple[str, str, int]]) -> None:
    book = book_with(*[request(n, [SelectionReason.uncertain], minutes=n) for n in range(4)])
    now = T0
    for who, op, dt in ops:
        now += timedelta(seconds=dt)
        if op == "lease":
            book.lease(who, now).item
        else:
            held = book.held_by(who, now)
            if held is not None:
                getattr(book, op)(held.request.item_id, who, now)
        live = [i for i in (book.get(r) for r in [request(n, [SelectionReason.audit]).item_id for n in range(4)])
                if i is not None and book.effective_state(i, now) is ItemState.leased]
        holders = [i.leased_by for i in live]
        assert len(holders) == len(set(holders)), "an annotator holds two leases"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]),
                          st.sampled_from(["lease", "lease sentiment", "lease triage", "label", "skip", "undo"]),
                          st.integers(0, 90)), max_size=60))
def test_what_each_call_returns_keeps_a_store_equal_to_the_book(ops: list[tuple[str, str, int]]) -> None:
    """The service writes back only the items a call returns: a change the book made without
    returning it (a lease released when the annotator switched task) would leave the store, and
    the next owner loading it, holding an item leased to someone who moved on."""
    reqs = [request(n, [SelectionReason.uncertain], minutes=n, task=("sentiment", "triage")[n % 2]) for n in range(4)]
    book = book_with(*reqs)
    store = {r.item_id: book.get(r.item_id) for r in reqs}
    finished: dict[str, list[str]] = {"a": [], "b": []}
    now = T0
    for who, op, dt in ops:
        now += timedelta(seconds=dt)
        if op.startswith("lease"):
            changed = book.lease(who, now, op.partition(" ")[2] or None).changed
        elif op == "undo":
            if not finished[who]:
                continue
            try:
                changed = book.undo(finished[who][-1], who, now)
            except NothingToUndo:
                continue
            finished[who].pop()
        else:
            held = book.held_by(who, now)
            if held is None:
                continue
            changed = [getattr(book, op)(held.request.item_id, who, now)]
            finished[who].append(held.request.item_id)
        store.update({i.request.item_id: i for i in changed})
        for r in reqs:
            assert store[r.item_id] == book.get(r.item_id), f"the store is behind the book after {who} {op}"


def test_switching_task_releases_the_held_lease_and_returns_it_to_store() -> None:
    news, ticket = request(1, [SelectionReason.uncertain]), request(2, [SelectionReason.uncertain], task="triage")
    book = book_with(news, ticket)
    assert book.lease("alice", T0, "sentiment").item.request == news
    switched = book.lease("alice", T0, "triage")
    assert switched.item.request == ticket
    assert [(i.request.item_id, i.state, i.leased_by) for i in switched.changed] == [
        (news.item_id, ItemState.open, None), (ticket.item_id, ItemState.leased, "alice")]
    assert book.lease("bob", T0, "sentiment").item.request == news


def test_lease_expires_and_the_item_is_open_again() -> None:
    book = book_with(request(1, [SelectionReason.uncertain]), lease_s=60)
    item = book.lease("alice", T0).item
    assert item is not None
    assert book.lease("bob", T0 + timedelta(seconds=59)).item is None
    later = T0 + timedelta(seconds=60)
    assert book.counts(later)["open"] == 1
    taken = book.lease("bob", later).item
    assert taken is not None and taken.request.item_id == item.request.item_id and taken.leased_by == "bob"
    with pytest.raises(NotLeasedToYou):
        book.label(item.request.item_id, "alice", later)


def test_label_after_expiry_is_refused_with_what_to_do() -> None:
    book = book_with(request(1, [SelectionReason.uncertain]), lease_s=60)
    item = book.lease("alice", T0).item
    assert item is not None
    with pytest.raises(LeaseExpired, match="lease again"):
        book.label(item.request.item_id, "alice", T0 + timedelta(seconds=61))


def test_label_and_skip_finish_items() -> None:
    book = book_with(request(1, [SelectionReason.uncertain]), request(2, [SelectionReason.uncertain], minutes=1))
    first = book.lease("ann", T0).item
    assert first is not None
    done = book.label(first.request.item_id, "ann", T0)
    assert done.state is ItemState.labelled and done.leased_by == "ann" and done.lease_expires is None
    second = book.lease("ann", T0).item
    assert second is not None and second.request.item_id != first.request.item_id
    assert book.skip(second.request.item_id, "ann", T0).state is ItemState.skipped
    assert book.lease("ann", T0).item is None
    assert book.counts(T0) == {"open": 0, "leased": 0, "labelled": 1, "skipped": 1}
    with pytest.raises(UnknownItem, match="lease one"):
        book.label("nope", "ann", T0)


def test_finished_by_names_only_the_annotators_own_finished_item_in_that_state() -> None:
    book = book_with(request(1, [SelectionReason.uncertain]), request(2, [SelectionReason.uncertain], minutes=1))
    first = book.lease("ann", T0).item
    assert first is not None
    item_id = first.request.item_id
    assert book.finished_by(item_id, "ann", ItemState.labelled) is None  # leased, not finished
    done = book.label(item_id, "ann", T0)
    assert book.finished_by(item_id, "ann", ItemState.labelled) == done
    assert book.finished_by(item_id, "ann", ItemState.skipped) is None
    assert book.finished_by(item_id, "bob", ItemState.labelled) is None
    assert book.finished_by("nope", "ann", ItemState.labelled) is None
    book.prune(T0 + timedelta(seconds=31))  # past the undo window the book forgets it
    assert book.finished_by(item_id, "ann", ItemState.labelled) is None


def test_undo_reopens_the_last_item_for_its_annotator_only() -> None:
    book = book_with(*[request(n, [SelectionReason.uncertain], minutes=n) for n in range(3)], undo_window_s=30)
    a = book.lease("ann", T0).item
    assert a is not None
    book.label(a.request.item_id, "ann", T0)
    b = book.lease("ann", T0).item
    assert b is not None
    book.skip(b.request.item_id, "ann", T0)
    c = book.lease("ann", T0).item
    assert c is not None
    with pytest.raises(NothingToUndo, match="latest"):
        book.undo(a.request.item_id, "ann", T0)
    with pytest.raises(NothingToUndo):
        book.undo(b.request.item_id, "bob", T0)
    changed = book.undo(b.request.item_id, "ann", T0 + timedelta(seconds=5))
    assert [(i.request.item_id, i.state) for i in changed] == [
        (c.request.item_id, ItemState.open), (b.request.item_id, ItemState.leased)]
    assert book.held_by("ann", T0 + timedelta(seconds=5)).request.item_id == b.request.item_id
    # undo steps back: the labelled one is next
    book.undo(a.request.item_id, "ann", T0 + timedelta(seconds=6))
    assert book.get(a.request.item_id).state is ItemState.leased
    assert book.get(b.request.item_id).state is ItemState.open


def test_undo_window_passes() -> None:
    book = book_with(request(1, [SelectionReason.uncertain]), undo_window_s=30)
    a = book.lease("ann", T0).item
    assert a is not None
    book.label(a.request.item_id, "ann", T0)
    with pytest.raises(NothingToUndo, match="window"):
        book.undo(a.request.item_id, "ann", T0 + timedelta(seconds=31))


def test_merge_keeps_the_newer_state() -> None:
    r = request(1, [SelectionReason.uncertain])
    book = book_with(r)
    leased = book.lease("ann", T0 + timedelta(seconds=1)).item
    assert leased is not None
    stale = book_with(r).get(r.item_id)  # the store's older 'open' row
    assert book.merge([stale]) == 0
    assert book.get(r.item_id).state is ItemState.leased
    fresh = book_with(r)
    fresh.add(request(2, [SelectionReason.audit]), T0)
    assert book.merge([fresh.get(request(2, [SelectionReason.audit]).item_id)]) == 1


def test_prune_forgets_finished_items_past_the_undo_window_only() -> None:
    book = book_with(*[request(n, [SelectionReason.uncertain], minutes=n) for n in range(3)], undo_window_s=30)
    a = book.lease("ann", T0).item
    book.label(a.request.item_id, "ann", T0)
    b = book.lease("ann", T0 + timedelta(seconds=20)).item
    book.skip(b.request.item_id, "ann", T0 + timedelta(seconds=20))
    c = book.lease("ann", T0 + timedelta(seconds=20)).item
    assert book.prune(T0 + timedelta(seconds=40)) == 1  # a went; b is still undoable, c is leased
    assert book.get(a.request.item_id) is None
    assert book.get(c.request.item_id).state is ItemState.leased
    book.undo(b.request.item_id, "ann", T0 + timedelta(seconds=41))
    assert book.get(b.request.item_id).state is ItemState.leased


def test_a_book_that_takes_the_queue_over_can_undo_what_the_previous_one_finished() -> None:
    """A new queue owner (or a restarted service) loads finished items from the store: each
    annotator's latest labelled or skipped item can still be undone there, in the same order."""
    reqs = [request(n, [SelectionReason.uncertain], minutes=n) for n in range(3)]
    before = book_with(*reqs, undo_window_s=30)
    a = before.lease("ann", T0).item
    stored = [before.label(a.request.item_id, "ann", T0)]
    b = before.lease("ann", T0 + timedelta(seconds=2)).item
    stored.append(before.skip(b.request.item_id, "ann", T0 + timedelta(seconds=2)))
    stored.append(before.lease("ann", T0 + timedelta(seconds=3)).item)
    after = LeaseBook(lease_s=60, undo_window_s=30)
    assert after.merge(reversed(stored)) == 3  # the store's order is not the order of the actions
    with pytest.raises(NothingToUndo, match="latest"):
        after.undo(a.request.item_id, "ann", T0 + timedelta(seconds=4))
    after.undo(b.request.item_id, "ann", T0 + timedelta(seconds=4))
    after.undo(a.request.item_id, "ann", T0 + timedelta(seconds=5))
    assert after.held_by("ann", T0 + timedelta(seconds=5)).request.item_id == a.request.item_id
    with pytest.raises(NothingToUndo):
        after.undo(a.request.item_id, "bob", T0 + timedelta(seconds=5))


def test_keep_open_forgets_only_open_items_that_were_not_read_again() -> None:
    """A refresh reads the next few open items: the book forgets the other open ones (a lapsed lease
    is open), never a live lease or an item that can still be undone."""
    reqs = [request(n, [SelectionReason.uncertain], minutes=n) for n in range(5)]
    book = book_with(*reqs, lease_s=60)
    done = book.lease("ann", T0).item
    book.label(done.request.item_id, "ann", T0)
    lapsed = book.lease("ann", T0).item
    live = book.lease("bob", T0 + timedelta(seconds=30)).item
    now = T0 + timedelta(seconds=61)
    kept_open = reqs[4].item_id
    assert book.keep_open({kept_open}, now) == 2  # the lapsed lease and the one open item not read
    assert book.get(lapsed.request.item_id) is None
    assert [i.request.item_id for i in book.pending(now)] == [kept_open]
    assert book.held_by("bob", now) == live
    assert book.get(done.request.item_id).state is ItemState.labelled


def test_a_reason_the_store_added_to_an_open_item_reaches_the_book() -> None:
    """A second request for an item still open (an alert's review of an uncertain item) adds its
    reason in a row of the same time in the store: the book kept its own request, so the item was
    not served first, and its lease wrote the reason out of the store again."""
    old, other = request(1, [SelectionReason.uncertain], minutes=1), request(0, [SelectionReason.uncertain])
    book = book_with(old, other)
    enriched = book.get(old.item_id).model_copy(update={"request": old.model_copy(update={
        "reasons": [SelectionReason.uncertain, SelectionReason.alert_review], "alert_id": "a-1"})})
    assert book.merge([enriched, book.get(other.item_id)]) == 1
    leased = book.lease("ann", T0 + timedelta(seconds=1)).item
    assert leased.request == enriched.request
    assert book.merge([enriched]) == 0  # the book's lease is newer than the store's open row
    assert book.get(old.item_id).state is ItemState.leased
