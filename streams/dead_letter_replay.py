"""Which dead letters go back to their topic (pure). `vigil dead-letters replay` sends a refused
message back to the raw topic it came from once the cause is fixed: a model version that scores a
text the previous one failed on (``scoring_failed``), a raised size limit (``too_large``), a
producer bug worked around. The message is read back from where it sat on that topic (ClickHouse
keeps no raw bytes, and a letter may hold only the start of a large message), so a letter can be
replayed while the topic's retention keeps its message, and only if the message there is the one
the letter's SHA-256 names.

Each letter goes back once. One refused again is a new letter with the same bytes at a new offset;
refused for the same reason as the letter a replay sent, it is that replay coming back, its cause
not fixed: it is left alone unless asked (``again``), or every run would send the same bytes and
add one more letter."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from streams.contracts import DeadLetterReason, Kind, StoredDeadLetter

LetterKey = tuple[str, int, int, str]  # source topic, partition, offset, SHA-256 of the bytes
ContentKey = tuple[str, str, DeadLetterReason]  # source topic, SHA-256 of the bytes, reason
Position = tuple[str, int, int]  # topic, partition, offset
Original = tuple[bytes | None, bytes | None]  # the key and value read back from a position
Bounds = Mapping[tuple[str, int], tuple[int, int]]  # (topic, partition) -> first offset held, end


def letter_key(letter: StoredDeadLetter) -> LetterKey:
    """A letter's identity: its position, and its bytes (the embedded broker reuses positions)."""
    return letter.source_topic, letter.partition, letter.offset, letter.raw_sha256


def content_key(letter: StoredDeadLetter) -> ContentKey:
    """What a letter refused: these bytes on this topic, for this reason."""
    return letter.source_topic, letter.raw_sha256, letter.reason


def position(letter: StoredDeadLetter) -> Position:
    return letter.source_topic, letter.partition, letter.offset


@dataclass(frozen=True)
class Replayed:
    """What earlier replays sent back: each letter, and what each refused (when recorded)."""

    letters: set[LetterKey] = field(default_factory=set)
    contents: set[ContentKey] = field(default_factory=set)


@dataclass
class ReplayPlan:
    send: list[tuple[Kind, StoredDeadLetter]] = field(default_factory=list)
    already_replayed: list[StoredDeadLetter] = field(default_factory=list)
    # The bytes and reason of a letter a replay sent back (before, or in this run): refused again.
    refused_again: list[StoredDeadLetter] = field(default_factory=list)
    # Not on its raw topic any more: past the retention, or the topic was recreated.
    gone: list[StoredDeadLetter] = field(default_factory=list)
    unknown_topic: list[StoredDeadLetter] = field(default_factory=list)  # a topic the workers no longer read


def plan_replay(letters: Iterable[StoredDeadLetter], replayed: Replayed, raw_topics: Mapping[str, Kind],
                bounds: Bounds, limit: int | None = None, *, again: bool = False) -> ReplayPlan:
    """Go through ``letters`` in order until ``limit`` are to be sent: each goes back with the kind
    of its topic, unless a replay sent it already, its topic is not a raw topic any more, its
    offset is outside what its partition holds now (``bounds``), or a replay sent its bytes back and
    they were refused for the same reason again (unless ``again``). A run sends the same bytes
    refused for the same reason once."""
    plan = ReplayPlan()
    if limit == 0:
        return plan
    resent = set() if again else set(replayed.contents)
    for letter in letters:
        kind = raw_topics.get(letter.source_topic)
        first, end = bounds.get((letter.source_topic, letter.partition), (0, 0))
        if letter_key(letter) in replayed.letters:
            plan.already_replayed.append(letter)
        elif kind is None:
            plan.unknown_topic.append(letter)
        elif not first <= letter.offset < end:
            plan.gone.append(letter)
        elif content_key(letter) in resent:
            plan.refused_again.append(letter)
        else:
            plan.send.append((kind, letter))
            resent.add(content_key(letter))
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
    return ReplayPlan(send, plan.already_replayed, plan.refused_again, gone, plan.unknown_topic)
