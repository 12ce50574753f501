"""Training data: a deterministic stratified validation split and a fingerprint of what was used."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from models.tasks import Row


@dataclass(frozen=True, slots=True)
class SplitConfig:
    val_fraction: float = 0.1
    seed: int = 13


@dataclass(frozen=True, slots=True)
class Split:
    train: list[Row]
    val: list[Row]
    config: SplitConfig


def stratified_split(rows: Sequence[Row], config: SplitConfig) -> Split:
    """Hold out ``val_fraction`` of every (source, label) group, chosen by a seeded shuffle.

    The same rows and config always give the same split, whatever the input order of groups,
    because each group is sorted by text before its seeded shuffle. Groups of one row stay in train.
    """
    if not 0 < config.val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {config.val_fraction}")
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row.source, row.label)].append(row)
    train: list[Row] = []
    val: list[Row] = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda r: r.text)
        random.Random(f"{config.seed}:{key[0]}:{key[1]}").shuffle(members)
        n_val = round(len(members) * config.val_fraction) if len(members) > 1 else 0
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return Split(train=train, val=val, config=config)


def cap_rows(rows: Sequence[Row], cap: int | None, seed: int) -> list[Row]:
    """A seeded random sample of at most ``cap`` rows (all rows, in order, when cap is None)."""
    if cap is None or cap >= len(rows):
        return list(rows)
    return random.Random(seed).sample(list(rows), cap)


def fingerprint(train_rows: Sequence[Row], split: SplitConfig, sources: Sequence[str]) -> str:
    """sha256 over the exact training rows (in order) and the split that produced them."""
    h = hashlib.sha256()
    h.update(json.dumps({"split": asdict(split), "sources": list(sources)}, sort_keys=True).encode())
    for row in train_rows:
        h.update(json.dumps([row.source, row.label, row.text], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return "sha256:" + h.hexdigest()
