"""Inter-annotator agreement on messages that several people labelled (counted by ``FeedbackStore.agreement``)."""

from __future__ import annotations

from dataclasses import dataclass


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
