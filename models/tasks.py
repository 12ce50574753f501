"""The two scoring tasks: their labels and how their bundled training rows are read."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SENTIMENT_LABELS = ("negative", "neutral", "positive")
# Twitter Financial News codes its labels 0 bearish, 1 bullish, 2 neutral.
_TWITTER_LABELS = {"0": "negative", "1": "positive", "2": "neutral"}


class UnknownTask(ValueError):
    """A task name that Vigil does not have."""


class BadDataFile(ValueError):
    """A training or evaluation CSV that cannot be read as labelled rows."""


@dataclass(frozen=True, slots=True)
class Row:
    text: str
    label: str
    source: str  # which corpus the row came from; splits are stratified per source and label


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise BadDataFile(f"{path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _twitter(data_dir: Path) -> list[Row]:
    path = data_dir / "twitter_financial_news" / "train.csv"
    rows = []
    for i, r in enumerate(_read_csv(path)):
        if r.get("label") not in _TWITTER_LABELS:
            raise BadDataFile(f"{path} row {i + 2}: label {r.get('label')!r} is not 0, 1 or 2")
        rows.append(Row(r["text"], _TWITTER_LABELS[r["label"]], "twitter_financial_news"))
    return rows


def _phrasebank(data_dir: Path) -> list[Row]:
    path = data_dir / "financial_phrasebank" / "train.csv"
    rows = []
    for i, r in enumerate(_read_csv(path)):
        if r.get("label") not in SENTIMENT_LABELS:
            raise BadDataFile(f"{path} row {i + 2}: label {r.get('label')!r} is not one of {SENTIMENT_LABELS}")
        rows.append(Row(r["text"], r["label"], "financial_phrasebank"))
    return rows


def banking77_labels(data_dir: Path) -> tuple[str, ...]:
    return tuple(json.loads((data_dir / "banking77" / "categories.json").read_text(encoding="utf-8")))


def _banking77(data_dir: Path) -> list[Row]:
    path = data_dir / "banking77" / "train.csv"
    known = set(banking77_labels(data_dir))
    rows = []
    for i, r in enumerate(_read_csv(path)):
        if r.get("category") not in known:
            raise BadDataFile(f"{path} row {i + 2}: category {r.get('category')!r} is not in categories.json")
        rows.append(Row(r["text"], r["category"], "banking77"))
    return rows


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    model_name: str  # what ScoredMessage.model_name carries
    labels: Callable[[Path], tuple[str, ...]]  # bundled data dir -> label order of the head
    sources: dict[str, Callable[[Path], list[Row]]]  # corpus name -> loader
    remove_links: bool = False  # new versions' tokenizers drop links (models/links.py)

    def load(self, data_dir: Path, sources: tuple[str, ...] | None = None) -> list[Row]:
        chosen = tuple(self.sources) if sources is None else sources
        unknown = [s for s in chosen if s not in self.sources]
        if unknown:
            raise UnknownTask(f"task {self.name} has no corpus {unknown}; choose from {sorted(self.sources)}")
        return [row for s in chosen for row in self.sources[s](data_dir)]


TASKS: dict[str, TaskSpec] = {
    "sentiment": TaskSpec(
        name="sentiment",
        model_name="vigil-sentiment-minilm",
        labels=lambda _data_dir: SENTIMENT_LABELS,
        sources={"twitter_financial_news": _twitter, "financial_phrasebank": _phrasebank},
        remove_links=True,
    ),
    "triage": TaskSpec(
        name="triage",
        model_name="vigil-triage-minilm",
        labels=banking77_labels,
        sources={"banking77": _banking77},
    ),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTask(f"unknown task {name!r}; choose from {', '.join(TASKS)}") from None


# Sentiment labels as the corpora write them: Twitter Financial News as 0/1/2 (its codes) or by
# name, bearish and bullish included.
_SENTIMENT_NAMES = {**_TWITTER_LABELS, "bearish": "negative", "bullish": "positive",
                    **{label: label for label in SENTIMENT_LABELS}}


@dataclass(frozen=True, slots=True)
class LabelledFile:
    texts: list[str]
    labels: list[str]
    # Financial PhraseBank's all_agree column (1: every annotator agreed), when the file has it.
    all_agree: list[bool] | None


def read_labelled_csv(path: Path, task: str) -> LabelledFile:
    """The rows of an evaluation CSV: columns text (or sentence) and label (or category), and
    all_agree when present. Sentiment labels may be Twitter Financial News' 0/1/2 codes."""
    rows = _read_csv(path)
    if not rows:
        raise BadDataFile(f"{path} has no rows")
    text = next((c for c in ("text", "sentence") if c in rows[0]), None)
    column = next((c for c in ("label", "category") if c in rows[0]), None)
    if text is None or column is None:
        raise BadDataFile(f"{path} needs columns text,label or text,category; it has {list(rows[0])}")
    labels = [r[column].strip() for r in rows]
    if task == "sentiment":
        labels = [_SENTIMENT_NAMES.get(y.lower(), y) for y in labels]
    all_agree = None
    if "all_agree" in rows[0]:
        bad = next((i for i, r in enumerate(rows) if r["all_agree"].strip() not in ("0", "1")), None)
        if bad is not None:
            raise BadDataFile(f"{path} row {bad + 2}: all_agree {rows[bad]['all_agree']!r} is not 0 or 1")
        all_agree = [r["all_agree"].strip() == "1" for r in rows]
    return LabelledFile([r[text] for r in rows], labels, all_agree)
