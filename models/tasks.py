"""The two scoring tasks: their labels and how their bundled training rows are read."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
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


# The csv module refuses fields over 128 KiB, and a long document is a text like any other (the model
# reads its first max_length tokens). A limit still stops a quote left open from reading the rest of
# a large file into one field.
_FIELD_LIMIT = 64 * 2**20


@dataclass(frozen=True, slots=True)
class _Record:
    fields: dict[str, str]  # column -> value; '' for the fields a row is short of
    row: int  # as a spreadsheet numbers it: the header is row 1, a quoted text over several lines is one row
    lines: tuple[int, int]  # the first and last line of the file it spans

    @property
    def at(self) -> str:
        """Where the row is, for messages."""
        return _place(self.row, *self.lines)


def _place(row: int, first: int, last: int) -> str:
    if first == last == row:
        return f"row {row}"
    return f"row {row} (line {first})" if first == last else f"row {row} (lines {first}-{last})"


def _read_csv(path: Path) -> Iterator[_Record]:
    """The data rows of a CSV as spreadsheets and pandas write them: a UTF-8 byte order mark is
    dropped, and rows whose fields are all blank are skipped."""
    if not path.is_file():
        raise BadDataFile(f"{path} does not exist")
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        row = last = 0  # the rows and lines read so far
        try:
            header = next(reader, [])
            row, last = 1, reader.line_num
            for values in reader:
                row, first, last = row + 1, last + 1, reader.line_num
                if any(v.strip() for v in values):
                    yield _Record({c: values[i] if i < len(values) else "" for i, c in enumerate(header)},
                                  row, (first, last))
        except csv.Error as e:  # in practice a field over the limit
            where = _place(row + 1, last + 1, reader.line_num)
            raise BadDataFile(f"{path} {where} cannot be read as CSV ({e}): close the quote it opens (a quote "
                              "never closed runs its text on over the lines after it)") from None
        except UnicodeDecodeError as e:
            raise BadDataFile(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} cannot be read): "
                              "save it as CSV UTF-8") from None


def _twitter(data_dir: Path) -> list[Row]:
    path = data_dir / "twitter_financial_news" / "train.csv"
    rows = []
    for record in _read_csv(path):
        r = record.fields
        if r.get("label") not in _TWITTER_LABELS:
            raise BadDataFile(f"{path} {record.at}: label {r.get('label')!r} is not 0, 1 or 2")
        rows.append(Row(r["text"], _TWITTER_LABELS[r["label"]], "twitter_financial_news"))
    return rows


def _phrasebank(data_dir: Path) -> list[Row]:
    path = data_dir / "financial_phrasebank" / "train.csv"
    rows = []
    for record in _read_csv(path):
        r = record.fields
        if r.get("label") not in SENTIMENT_LABELS:
            raise BadDataFile(f"{path} {record.at}: label {r.get('label')!r} is not one of {SENTIMENT_LABELS}")
        rows.append(Row(r["text"], r["label"], "financial_phrasebank"))
    return rows


def banking77_labels(data_dir: Path) -> tuple[str, ...]:
    return tuple(json.loads((data_dir / "banking77" / "categories.json").read_text(encoding="utf-8")))


def _banking77(data_dir: Path) -> list[Row]:
    path = data_dir / "banking77" / "train.csv"
    known = set(banking77_labels(data_dir))
    rows = []
    for record in _read_csv(path):
        r = record.fields
        if r.get("category") not in known:
            raise BadDataFile(f"{path} {record.at}: category {r.get('category')!r} is not in categories.json")
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
    records = _read_csv(path)
    head = next(records, None)
    if head is None:
        raise BadDataFile(f"{path} has no rows")
    text = next((c for c in ("text", "sentence") if c in head.fields), None)
    column = next((c for c in ("label", "category") if c in head.fields), None)
    if text is None or column is None:
        raise BadDataFile(f"{path} needs columns text,label or text,category; it has {list(head.fields)}")
    agree_column = "all_agree" in head.fields
    texts: list[str] = []
    labels: list[str] = []
    all_agree: list[bool] = []
    for record in chain([head], records):
        r = record.fields
        label = r[column].strip()
        if not r[text].strip() or not label:
            missing = "text" if not r[text].strip() else column
            # a quote never closed runs its text on over the rows after it, so the last has no label
            hint = ", or close a quote in it" if record.lines[0] != record.lines[1] else ""
            raise BadDataFile(f"{path} {record.at} has no {missing}: give it one{hint}, or delete the row")
        texts.append(r[text])
        labels.append(_SENTIMENT_NAMES.get(label.lower(), label) if task == "sentiment" else label)
        if agree_column:
            if r["all_agree"].strip() not in ("0", "1"):
                raise BadDataFile(f"{path} {record.at}: all_agree {r['all_agree']!r} is not 0 or 1")
            all_agree.append(r["all_agree"].strip() == "1")
    return LabelledFile(texts, labels, all_agree if agree_column else None)
