"""Which labelling-service instance owns the queue, and a clean hand-over between instances.

"One item, one annotator" needs the lease book in one place, so of several `vigil label-ui`
instances exactly one owns the queue at a time; the others serve what needs no book (the page,
corrections, stats, verdicts, ticket acks) and forward queue calls to the owner. Who owns is decided
elsewhere (``feedback.election``, a Kafka consumer group); this class holds the answer for the
request handlers. No Kafka, no ClickHouse, no HTTP.

Three states: owner, standby (another instance owns), and deciding (a hand-over is under way).
- A queue call runs inside ``serving()``. Giving the queue up (``release``) first waits for the
  calls in flight, so their writes are in ClickHouse before the next owner reads the queue there.
- A call that arrives while the owner is being decided waits for the decision (``decided``)
  rather than failing at once: a rebalance takes a few seconds.
- A call that changes the queue asks the election to confirm (``confirm_with``) that this
  instance still owns it, before the change and again after it is written. What this instance
  believes can be stale: the election learns of a lost ownership only at its next exchange with
  Kafka, and a process paused (or starved of CPU) past its session timeout has been replaced
  before it notices.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

log = logging.getLogger(__name__)


class NotQueueOwner(Exception):
    """This instance does not own the queue now; forward the call to the owner."""


class OwnershipUnconfirmed(NotQueueOwner):
    """This instance believed it owned the queue, but the election could not confirm it."""


Confirm = Callable[[], Awaitable[bool]]


class QueueOwnership:
    def __init__(self, url: str, *, owner: bool = False) -> None:
        self.url = url
        self.owner_url: str | None = url if owner else None
        self._owner = owner
        self._decided = asyncio.Event()
        if owner:
            self._decided.set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._confirm: Confirm | None = None

    @classmethod
    def sole(cls, url: str) -> QueueOwnership:
        """A service that owns the queue for good: a single instance with no election."""
        return cls(url, owner=True)

    @property
    def owns(self) -> bool:
        return self._owner

    # --- what the election reports ----------------------------------------------------------------

    async def release(self, drain_s: float) -> None:
        """A rebalance began: stop taking queue calls until it is decided, and if this instance
        owned the queue, wait (up to ``drain_s``) for the calls in flight to finish."""
        was_owner, self._owner = self._owner, False
        self._decided.clear()
        if not was_owner:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), drain_s)
        except TimeoutError:
            log.warning("gave the labelling queue up with %d call(s) still running after %.1fs; the next "
                        "owner picks up their writes at its next refresh", self._in_flight, drain_s)

    def take(self) -> None:
        """This instance owns the queue now (its book is loaded)."""
        self._owner = True
        self.owner_url = self.url
        self._decided.set()

    def stand_by(self) -> None:
        """Another instance owns the queue."""
        self._owner = False
        self._decided.set()

    def announce(self, url: str) -> None:
        """The owner announced where it serves."""
        self.owner_url = url.rstrip("/")

    def confirm_with(self, confirm: Confirm) -> None:
        """How a change to the queue checks, just before it is made, that this instance still owns
        it: True only if the authority that decides ownership says so now."""
        self._confirm = confirm

    # --- what the request handlers use ------------------------------------------------------------

    async def decided(self, timeout_s: float) -> bool:
        """Wait until no hand-over is under way; False if one still is after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._decided.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @asynccontextmanager
    async def serving(self, *, changes: bool = True) -> AsyncIterator[None]:
        """Run one queue call as the owner; raises NotQueueOwner when this instance is not, and
        OwnershipUnconfirmed when a call that ``changes`` the queue cannot be confirmed."""
        if not self._owner:
            raise NotQueueOwner(f"the queue is owned by {self.owner_url or 'an instance not yet known'}")
        self._in_flight += 1  # from here a release waits for this call, the confirmation included
        self._idle.clear()
        confirm = self._confirm if changes else None
        try:
            if confirm is not None and not await confirm():
                raise OwnershipUnconfirmed(
                    f"this instance ({self.url}) could not confirm with Kafka that it still owns the labelling queue"
                )
            yield
            # Paused between that confirmation and its write (past the session timeout), this
            # instance may have written after the next owner loaded the queue, which then does not
            # know of the change: confirm again, so the caller is never handed one the owner may
            # not know. A release under way needs no second look: it waits for this call.
            if confirm is not None and self._owner and not await confirm():
                raise OwnershipUnconfirmed(
                    f"this instance ({self.url}) lost the labelling queue while changing it; the change is "
                    "saved and the next owner reads it"
                )
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
