"""Queue ownership on one instance: who serves queue calls, and a hand-over that lets the calls in
flight finish (pure asyncio, no Kafka)."""

from __future__ import annotations

import asyncio

import pytest

from feedback.ownership import NotQueueOwner, OwnershipUnconfirmed, QueueOwnership
from streams.settings import VigilSettings


def test_only_the_owner_serves_queue_calls() -> None:
    async def run() -> None:
        own = QueueOwnership("http://a:1")
        with pytest.raises(NotQueueOwner, match="not yet known"):
            async with own.serving():
                pass
        own.announce("http://b:1/")
        with pytest.raises(NotQueueOwner, match="http://b:1"):
            async with own.serving():
                pass
        own.take()
        async with own.serving():
            assert own.owns and own.owner_url == "http://a:1"

    asyncio.run(run())


def test_giving_the_queue_up_waits_for_the_calls_in_flight() -> None:
    async def run() -> list[str]:
        own = QueueOwnership.sole("http://a:1")
        steps: list[str] = []
        entered = asyncio.Event()

        async def call() -> None:
            async with own.serving():
                entered.set()
                await asyncio.sleep(0.2)
                steps.append("call done")

        task = asyncio.create_task(call())
        await entered.wait()
        await own.release(drain_s=5)
        steps.append("released")
        await task
        with pytest.raises(NotQueueOwner):
            async with own.serving():
                pass
        return steps

    assert asyncio.run(run()) == ["call done", "released"]


def test_a_change_to_the_queue_needs_the_elections_confirmation_and_a_read_does_not() -> None:
    async def run() -> tuple[list[str], list[str]]:
        own = QueueOwnership.sole("http://a:1")
        answers, asked, steps = [True, True, False], [], []
        gate = asyncio.Event()

        async def confirm() -> bool:
            asked.append("asked")
            await gate.wait()
            return answers.pop(0)

        own.confirm_with(confirm)
        async with own.serving(changes=False):
            steps.append("read served unasked")
        gate.set()
        async with own.serving():
            steps.append("change confirmed")
        with pytest.raises(OwnershipUnconfirmed, match="http://a:1"):
            async with own.serving():
                steps.append("never")
        # A release that starts while a confirmation is pending waits for the call it belongs to.
        gate.clear()
        answers.append(True)

        async def call() -> None:
            async with own.serving():
                steps.append("slow change done")

        task = asyncio.create_task(call())
        while len(asked) < 4:
            await asyncio.sleep(0.01)
        release = asyncio.create_task(own.release(drain_s=5))
        await asyncio.sleep(0.1)
        assert not release.done()
        gate.set()
        await task
        await release
        steps.append("released")
        return asked, steps

    asked, steps = asyncio.run(run())
    # Twice for the change that went through (before and after it), once for the refused one, and
    # once for the change a release began during: the release waits for it instead.
    assert asked == ["asked"] * 4
    assert steps == ["read served unasked", "change confirmed", "slow change done", "released"]


def test_a_change_written_after_the_ownership_was_lost_is_not_answered_as_done() -> None:
    """A process paused between the confirmation and its write, past a hand-over: the write lands,
    but the caller must not be told so, as the next owner may have loaded the queue before it."""

    async def run() -> tuple[list[str], list[str]]:
        own = QueueOwnership.sole("http://a:1")
        answers, steps = [True, False], []

        async def confirm() -> bool:
            steps.append("confirmed" if answers[0] else "refused")
            return answers.pop(0)

        own.confirm_with(confirm)
        with pytest.raises(OwnershipUnconfirmed, match="lost the labelling queue while changing it"):
            async with own.serving():
                steps.append("written")
        # A clean hand-over that starts during a change waits for it: no second confirmation.
        answers.append(True)
        async with own.serving():
            steps.append("written")
            await own.release(drain_s=0)
        steps.append("answered")
        return steps, answers

    steps, answers = asyncio.run(run())
    assert steps == ["confirmed", "written", "refused", "confirmed", "written", "answered"]
    assert answers == []


def test_release_gives_up_waiting_after_the_drain_bound() -> None:
    async def run() -> float:
        own = QueueOwnership.sole("http://a:1")
        stuck = asyncio.Event()

        async def call() -> None:
            async with own.serving():
                await stuck.wait()

        task = asyncio.create_task(call())
        await asyncio.sleep(0)
        started = asyncio.get_running_loop().time()
        await own.release(drain_s=0.1)
        took = asyncio.get_running_loop().time() - started
        stuck.set()
        await task
        return took

    assert 0.1 <= asyncio.run(run()) < 2


def test_calls_wait_for_a_hand_over_to_be_decided() -> None:
    async def run() -> tuple[bool, bool, bool]:
        own = QueueOwnership.sole("http://a:1")
        await own.release(drain_s=1)  # a rebalance began
        undecided = await own.decided(0.05)
        waiter = asyncio.create_task(own.decided(5))
        await asyncio.sleep(0.05)
        own.stand_by()  # another instance got the queue
        return undecided, await waiter, own.owns

    assert asyncio.run(run()) == (False, True, False)


def test_the_url_an_instance_announces() -> None:
    assert VigilSettings(ui_host="10.0.0.5", ui_port=9000).ui_url == "http://10.0.0.5:9000"
    assert VigilSettings(ui_host="::1").ui_url == "http://[::1]:8088"
    assert VigilSettings(ui_host="0.0.0.0").ui_url.startswith("http://") and "0.0.0.0" not in VigilSettings(
        ui_host="0.0.0.0").ui_url  # other machines cannot reach "every address": the host name instead
    assert VigilSettings(ui_host="0.0.0.0", ui_advertised_url="https://ui-2.internal/").ui_url == "https://ui-2.internal"
    with pytest.raises(ValueError, match="pattern"):
        VigilSettings(ui_advertised_url="ui-2.internal:8088")
