"""Training data: a deterministic stratified validation split and a fingerprint of what was used."""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from models.links import LINK
from models.tasks import Row

_LINK = re.compile(LINK)


@dataclass(frozen=True, slots=True)
class SplitConfig:
    val_fraction: float = 0.1
    seed: int = 13
    # Versions trained before this existed were split row by row: their cards lack the setting, and
    # rebuilding their gold set or replay pool must give the split they were trained around.
    group_duplicates: bool = True


@dataclass(frozen=True, slots=True)
class Split:
    train: list[Row]
    val: list[Row]
    config: SplitConfig


def duplicate_key(text: str) -> str:
    """What the model reads of ``text``: MiniLM's tokenizer is uncased and a sentiment version
    drops links, so texts that differ only in case, spacing, Unicode form or links are one text."""
    return " ".join(_LINK.sub(" ", unicodedata.normalize("NFKC", text)).casefold().split())


def stratified_split(rows: Sequence[Row], config: SplitConfig) -> Split:
    """Hold out ``val_fraction`` of every (source, label) group, chosen by a seeded shuffle.

    With ``group_duplicates`` the texts the model cannot tell apart (``duplicate_key``) fall on one
    side together: the bundled tweets repeat headlines under new links, and a copy in each split is
    validation on a training row. A group of copies counts towards the (source, label) of most of
    them.

    The same rows and config always give the same split, whatever the input order, because the
    shuffled units are sorted first. A (source, label) group of one unit stays in train.
    """
    if not 0 < config.val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {config.val_fraction}")
    strata: dict[tuple[str, str], list[list[Row]]] = defaultdict(list)
    for unit in _units(rows, config.group_duplicates):
        strata[_stratum(unit)].append(unit)
    train: list[Row] = []
    val: list[Row] = []
    for stratum in sorted(strata):
        units = strata[stratum]
        units.sort(key=lambda unit: [(r.text, r.source, r.label) for r in unit])
        random.Random(f"{config.seed}:{stratum[0]}:{stratum[1]}").shuffle(units)
        target = round(sum(map(len, units)) * config.val_fraction) if len(units) > 1 else 0
        taken = 0
        for unit in units:
            # A group too large for what is left of the target trains, so validation keeps its size.
            if taken + len(unit) <= target:
                val.extend(unit)
                taken += len(unit)
            else:
                train.extend(unit)
    return Split(train=train, val=val, config=config)


def _stratum(copies: Sequence[Row]) -> tuple[str, str]:
    counts = Counter((r.source, r.label) for r in copies)
    return min(counts, key=lambda sl: (-counts[sl], sl))


def _units(rows: Sequence[Row], grouped: bool) -> list[list[Row]]:
    """What the split shuffles: the groups of copies (each sorted), or each row on its own, as
    versions before were split."""
    if not grouped:
        return [[row] for row in rows]
    copies: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        copies[duplicate_key(row.text)].append(row)
    return [sorted(unit, key=lambda r: (r.text, r.source, r.label)) for unit in copies.values()]


def cap_rows(rows: Sequence[Row], cap: int | None, seed: int) -> list[Row]:
    """A seeded random sample of at most ``cap`` rows (all rows, in order, when cap is None)."""
    if cap is None or cap >= len(rows):
        return list(rows)
    return random.Random(seed).sample(list(rows), cap)


def fingerprint(train_rows: Sequence[Row], split: SplitConfig, sources: Sequence[str]) -> str:
    """sha256 over the exact training rows (in order) and the split that produced them."""
    described = asdict(split)
    if not split.group_duplicates:  # as versions split row by row were fingerprinted
        del described["group_duplicates"]
    h = hashlib.sha256()
    h.update(json.dumps({"split": described, "sources": list(sources)}, sort_keys=True).encode())
    for row in train_rows:
        h.update(json.dumps([row.source, row.label, row.text], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return "sha256:" + h.hexdigest()
