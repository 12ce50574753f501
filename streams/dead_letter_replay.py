"""Which dead letters go back to their topic (pure). `vigil dead-letters replay` sends a refused
message's original key and bytes to the raw topic it came from, once the cause is fixed: a model
version that scores a text the previous one failed on (``scoring_failed``), a raised size limit
(``too_large``), a producer bug worked around. Each letter goes back once; one that is refused
again is a new dead letter, at its new offset, and can be replayed again after the next fix."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from streams.contracts import DeadLetter, Kind

LetterKey = tuple[str, int, int, str]  # source topic, partition, offset, SHA-256 of the bytes


def letter_key(letter: DeadLetter) -> LetterKey:
    """A letter's identity: its position, and its bytes (the embedded broker reuses positions)."""
    return letter.source_topic, letter.partition, letter.offset, hashlib.sha256(letter.raw).hexdigest()


@dataclass
class ReplayPlan:
    send: list[tuple[Kind, DeadLetter]] = field(default_factory=list)
    already_replayed: list[DeadLetter] = field(default_factory=list)
    unknown_topic: list[DeadLetter] = field(default_factory=list)  # a topic the workers no longer read


def plan_replay(letters: Iterable[DeadLetter], replayed: set[LetterKey], raw_topics: Mapping[str, Kind],
                limit: int | None = None) -> ReplayPlan:
    """Go through ``letters`` in order until ``limit`` are to be sent: each goes back with the kind
    of its topic, unless a replay sent it already or its topic is not a raw topic any more."""
    plan = ReplayPlan()
    if limit == 0:
        return plan
    for letter in letters:
        kind = raw_topics.get(letter.source_topic)
        if letter_key(letter) in replayed:
            plan.already_replayed.append(letter)
        elif kind is None:
            plan.unknown_topic.append(letter)
        else:
            plan.send.append((kind, letter))
            if len(plan.send) == limit:
                break
    return plan
