"""Which dead letters go back to their topic (pure). `vigil dead-letters replay` sends a refused
message back to the raw topic it came from once the cause is fixed: a model version that scores a
text the previous one failed on (``scoring_failed``), a raised size limit (``too_large``), a
producer bug worked around. The message is read back from where it sat on that topic (ClickHouse
keeps no raw bytes, and a letter may hold only the start of a large message), so a letter can be
replayed while the topic's retention keeps its message, and only if the message there is the one
the letter's SHA-256 names.

Each letter goes back once; one that is refused again is a new dead letter, at its new offset, and
can be replayed again after the next fix."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from streams.contracts import Kind, StoredDeadLetter

LetterKey = tuple[str, int, int, str]  # source topic, partition, offset, SHA-256 of the bytes
Position = tuple[str, int, int]  # topic, partition, offset
Original = tuple[bytes | None, bytes | None]  # the key and value read back from a position
Bounds = Mapping[tuple[str, int], tuple[int, int]]  # (topic, partition) -> first offset held, end


def letter_key(letter: StoredDeadLetter) -> LetterKey:
    """A letter's identity: its position, and its bytes (the embedded broker reuses positions)."""
    return letter.source_topic, letter.partition, letter.offset, letter.raw_sha256


def position(letter: StoredDeadLetter) -> Position:
    return letter.source_topic, letter.partition, letter.offset


@dataclass
class ReplayPlan:
    send: list[tuple[Kind, StoredDeadLetter]] = field(default_factory=list)
    already_replayed: list[StoredDeadLetter] = field(default_factory=list)
    # Not on its raw topic any more: past the retention, or the topic was recreated.
    gone: list[StoredDeadLetter] = field(default_factory=list)
    unknown_topic: list[StoredDeadLetter] = field(default_factory=list)  # a topic the workers no longer read


def plan_replay(letters: Iterable[StoredDeadLetter], replayed: set[LetterKey], raw_topics: Mapping[str, Kind],
                bounds: Bounds, limit: int | None = None) -> ReplayPlan:
    """Go through ``letters`` in order until ``limit`` are to be sent: each goes back with the kind
    of its topic, unless a replay sent it already, its topic is not a raw topic any more, or its
    offset is outside what its partition holds now (``bounds``)."""
    plan = ReplayPlan()
    if limit == 0:
        return plan
    for letter in letters:
        kind = raw_topics.get(letter.source_topic)
        first, end = bounds.get((letter.source_topic, letter.partition), (0, 0))
        if letter_key(letter) in replayed:
            plan.already_replayed.append(letter)
        elif kind is None:
            plan.unknown_topic.append(letter)
        elif not first <= letter.offset < end:
            plan.gone.append(letter)
        else:
            plan.send.append((kind, letter))
            if len(plan.send) == limit:
                break
    return plan


def confirm(plan: ReplayPlan, originals: Mapping[Position, Original]) -> ReplayPlan:
    """``plan`` with each letter to send whose message is not at its position (``originals``: what
    was read there) or is another message (another SHA-256: a recreated topic) moved to ``gone``."""
    send, gone = [], list(plan.gone)
    for kind, letter in plan.send:
        original = originals.get(position(letter))
        # A null value was refused as empty, like zero bytes: its letter holds b"".
        if original is not None and hashlib.sha256(original[1] or b"").hexdigest() == letter.raw_sha256:
            send.append((kind, letter))
        else:
            gone.append(letter)
    return ReplayPlan(send, plan.already_replayed, gone, plan.unknown_topic)
