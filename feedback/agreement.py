"""Inter-annotator agreement on messages that several people labelled, and per-annotator counts."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

from feedback.contracts import Correction


@dataclass(frozen=True, slots=True)
class Agreement:
    messages: int  # labelled by two or more annotators
    unanimous: int  # of those, every annotator gave the same label
    pairs: int  # annotator pairs over those messages
    agreeing_pairs: int

    @property
    def pairwise(self) -> float | None:
        """Share of annotator pairs that agree; None until some message has two labels."""
        return self.agreeing_pairs / self.pairs if self.pairs else None


def agreement(corrections: Iterable[Correction]) -> Agreement:
    """The latest label per (task, message, annotator) counts (as in the feedback table)."""
    latest: dict[tuple[str, str], dict[str, Correction]] = defaultdict(dict)
    for c in corrections:
        held = latest[(c.task, c.message_id)].get(c.annotator)
        if held is None or c.created_at >= held.created_at:
            latest[(c.task, c.message_id)][c.annotator] = c
    messages = unanimous = pairs = agreeing = 0
    for by_annotator in latest.values():
        labels = [c.human_label for c in by_annotator.values()]
        if len(labels) < 2:
            continue
        messages += 1
        unanimous += len(set(labels)) == 1
        for a, b in combinations(labels, 2):
            pairs += 1
            agreeing += a == b
    return Agreement(messages, unanimous, pairs, agreeing)


def labels_per_annotator(corrections: Iterable[Correction]) -> dict[str, int]:
    return dict(sorted(Counter(c.annotator for c in corrections).items()))
