"""The scorer interface shared by the stream workers and the model code.

Texts in; for each text a label, per-class probabilities, confidence, margin, entropy and the
model version out, in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    probs: dict[str, float]
    confidence: float  # top-1 probability
    margin: float  # top-1 minus top-2 probability
    entropy: float  # natural-log entropy of the distribution
    truncated: bool  # the text did not fit the model's window and was cut


class Scorer(Protocol):
    task: str
    model_name: str
    model_version: str
    labels: tuple[str, ...]

    def score(self, texts: Sequence[str]) -> list[Prediction]:
        """Score texts in one call (the scorer batches internally); results in input order."""
        ...
