"""Tickers a news item is about: its cashtags ($TSLA, $BRK.B), its own ``tickers`` field, and
optionally company names from a small dictionary, matched as the dictionary writes them. Pure.

Money amounts ($100, $5.2bn) are not cashtags: a cashtag starts with a letter. Tickers come out
upper-case, with one share-class separator ("BRK-B", "BRK/B" and "BRK.B" are all ``BRK.B``),
de-duplicated, in order of first mention (declared ones first).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# A root of 1-8 letters/digits starting with a letter, then an optional share-class suffix after
# "." (1-3 characters: BRK.B, WPG.PI), "-" (1-2: BMY-R) or "/" (1: BRK/B; a longer word after "/" is
# another ticker of a pair, "$SPY/QQQ", "$EUR/USD", not a class). Not preceded by a word character or
# "$" (US$5, $$). The suffix must end at a word boundary so "$AMZN." at a sentence end gives AMZN.
# A tag followed by a letter or digit of any script, a zero-width character or a longer "." suffix is
# no cashtag at all, rather than a shorter one: "$TS\u200bLA", "$TSLÁ", "$TSLА" (a Cyrillic А) and
# "$BRK.BBBB" must not count for TS, TSL(A) and BRK; nor is one followed by a combining mark, which
# changes its last letter (checked in cashtags(): re has no class for marks). A longer "-" word, or
# one more hyphenated, is an English compound, not a share class: "$AAPL-led" and "$AMC-to-the-moon"
# are AAPL and AMC. Chinese, Japanese and Korean, written without spaces, may follow directly:
# "$TSLA股价".
_CJK = (
    "\u1100-\u11ff\u3005-\u3007\u3040-\u30ff\u3100-\u318f\u31a0-\u31bf\u31f0-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uffdc\U00020000-\U0003134f"
)
_CASHTAG = re.compile(
    r"(?<![\w$])\$([A-Za-z][A-Za-z0-9]{0,7}"
    r"(?:\.[A-Za-z0-9]{1,3}|-[A-Za-z0-9]{1,2}(?![.\-][A-Za-z0-9])|/[A-Za-z0-9](?![./\-][A-Za-z0-9]))?)"
    rf"(?!(?![{_CJK}])[^\W_]|[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]|\.[A-Za-z0-9])"
)
# Every ticker comes out in this one form: a root, then at most one share class after ".". Declared
# tickers are held to it at decode (streams.contracts.Ticker), so none is kept as a second form of a
# company ("TSLA." beside TSLA, "BRK..B").
MAX_TICKER_CHARS = 12
_VALID = re.compile(r"[A-Z][A-Z0-9]*(?:\.[A-Z0-9]{1,3})?")
# The same, as a producer may write it in the ``tickers`` field: any case, any class separator.
DECLARED_TICKER_PATTERN = r"^[A-Za-z][A-Za-z0-9]*(?:[./\-][A-Za-z0-9]{1,3})?$"
_CLASS_SEPARATOR = str.maketrans({"-": ".", "/": "."})
# Tickers judged per news item (VIGIL_MAX_TICKERS_PER_MESSAGE): the declared field's own cap.
DEFAULT_MAX_TICKERS = 32


class TickerDictionaryError(ValueError):
    """The company-name dictionary file is missing, or not a JSON object of name -> ticker (or
    name -> {"ticker": ..., "any_case": ...})."""


def normalise(ticker: str) -> str | None:
    """``$brk.b``, ``BRK-B`` and ``BRK/B`` -> ``BRK.B``; None when it cannot be a ticker."""
    t = ticker.strip().lstrip("$")
    if not t.isascii():  # str.upper() is Unicode's: a dotless "ı" would become the I of IBM
        return None
    t = t.upper().translate(_CLASS_SEPARATOR)
    return t if len(t) <= MAX_TICKER_CHARS and _VALID.fullmatch(t) else None


def cashtags(text: str) -> list[str]:
    """The cashtags in ``text``, normalised, de-duplicated, in order."""
    # Composed, an accent is a letter the pattern sees; one that has no composed form is a mark.
    text = unicodedata.normalize("NFC", text)
    return _dedupe(
        m.group(1).upper().translate(_CLASS_SEPARATOR)
        for m in _CASHTAG.finditer(text)
        if m.end() == len(text) or not unicodedata.category(text[m.end()]).startswith("M")
    )


# A name's words are looked up in the text's, so finding names takes a dictionary look-up per word
# however many names there are (one regex alternation of every name, tried at every word, took
# 2.6 s on 8,000 characters with 2,000 names, holding the GIL). A word is a run of letters, digits
# and their combining marks; hyphen-joined words are one ("meta-analysis" is no mention of Meta);
# any other character but whitespace is a word of its own, so "Apple's" holds Apple and a name's
# punctuation must be in the text, spaced or not ("AT&T", "AT & T"). Any run of whitespace parts
# words: "Berkshire\nHathaway" is Berkshire Hathaway.
_WORD = re.compile(r"\w+(?:-\w+)*|[^\w\s]")
_OTHER_HYPHENS = re.compile("[\u2010\u2011]")
# Longest name, in words: bounds the look-ups per word of the text.
MAX_NAME_WORDS = 16


def _words(text: str) -> list[str]:
    text = _OTHER_HYPHENS.sub("-", unicodedata.normalize("NFC", text))
    words: list[str] = []
    end = -1
    after_mark = False
    for m in _WORD.finditer(text):
        word = m.group()
        # re's \w has no combining marks: "हिन्दी" comes as four pieces and marks between, glued back here
        mark = len(word) == 1 and unicodedata.category(word).startswith("M")
        if words and m.start() == end and (mark or after_mark):
            words[-1] += word
        else:
            words.append(word)
        after_mark, end = mark, m.end()
    return words


def _fold(word: str) -> str:
    # İ folds to i and a combining dot, but Turkish upper-cases every i to İ: "BERKSHİRE" is Berkshire.
    return word.casefold().replace("i\u0307", "i")


class CompanyDictionary:
    """Whole-word company names -> tickers (longest name wins on overlap). A name matches as it is
    written ("Apple", not "apple pie"; "Target", not "price target") unless its entry opts into any
    case: ``{"Tesla": {"ticker": "TSLA", "any_case": true}}``."""

    def __init__(self, names: Mapping[str, str | Mapping[str, Any]]) -> None:
        # names by their words as written, and any-case names by their words' case folding
        self._as_written: dict[tuple[str, ...], str] = {}
        self._any_case: dict[tuple[str, ...], str] = {}
        # words' case folding -> the first name with them, and its ticker
        seen: dict[tuple[str, ...], tuple[str, str]] = {}
        for name, entry in names.items():
            ticker, any_case = _entry(name, entry)
            words = _words(name)
            if not words:
                raise TickerDictionaryError(f"the name {name!r} is blank; remove the entry")
            if len(words) > MAX_NAME_WORDS:
                raise TickerDictionaryError(
                    f"the name {name!r} has {len(words)} words; a name may have {MAX_NAME_WORDS} at most: shorten it"
                )
            folded = tuple(map(_fold, words))
            first, first_ticker = seen.setdefault(folded, (name, ticker))
            if first_ticker != ticker:
                # as written both would match, but one is most likely a mistake; any case, one would win
                raise TickerDictionaryError(
                    f"the names {first!r} -> {first_ticker} and {name!r} -> {ticker} differ only in case or "
                    f"spacing; give them one ticker or remove one"
                )
            if any_case:
                self._any_case[folded] = ticker
            else:
                self._as_written[tuple(words)] = ticker
        # first word -> the lengths of the names it starts, longest first
        self._as_written_lengths = _lengths(self._as_written)
        self._any_case_lengths = _lengths(self._any_case)

    @classmethod
    def from_json(cls, path: Path) -> CompanyDictionary:
        """Load ``{"Tesla": "TSLA", "Berkshire Hathaway": {"ticker": "BRK.B", "any_case": true}}``."""
        where = f"{path} (VIGIL_TICKER_DICTIONARY_PATH)"
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=_one_value_per_name)
            if not isinstance(data, dict):
                raise TickerDictionaryError("must hold one JSON object of company name -> ticker")
            return cls(data)
        except TickerDictionaryError as e:
            raise TickerDictionaryError(f"{where}: {e}") from None
        except (OSError, ValueError) as e:
            raise TickerDictionaryError(f"cannot read the company dictionary {where}: {e}") from e

    def find(self, text: str) -> list[str]:
        """The tickers of the names in ``text``, in order; the longest name wins where names overlap."""
        if not self._as_written and not self._any_case:
            return []
        words = _words(text)
        folded = list(map(_fold, words)) if self._any_case else words
        found: list[str] = []
        i = 0
        while i < len(words):
            match = self._match(words, folded, i)
            if match is None:
                i += 1
            else:
                found.append(match[1])
                i += match[0]
        return _dedupe(found)

    def _match(self, words: list[str], folded: list[str], i: int) -> tuple[int, str] | None:
        """The longest name starting at word ``i``: its length in words and its ticker."""
        best: tuple[int, str] | None = None
        for tickers, lengths, text in (
            (self._as_written, self._as_written_lengths, words), (self._any_case, self._any_case_lengths, folded)
        ):
            for n in lengths.get(text[i], ()):
                if best is not None and n <= best[0]:
                    break
                ticker = tickers.get(tuple(text[i : i + n]))
                if ticker is not None:
                    best = n, ticker
                    break
        return best


def _lengths(tickers: Mapping[tuple[str, ...], str]) -> dict[str, list[int]]:
    lengths: dict[str, set[int]] = {}
    for words in tickers:
        lengths.setdefault(words[0], set()).add(len(words))
    return {first: sorted(ns, reverse=True) for first, ns in lengths.items()}


def _one_value_per_name(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of a repeated key: the file's first entry for a name would be dropped unseen
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj and not _same_entry(name, obj[name], value):
            raise TickerDictionaryError(f"{name!r} appears twice, as {obj[name]!r} and {value!r}; keep one")
        obj[name] = value
    return obj


def _same_entry(name: str, a: object, b: object) -> bool:
    try:
        return _entry(name, a) == _entry(name, b)
    except TickerDictionaryError:
        return a == b


def _entry(name: str, entry: object) -> tuple[str, bool]:
    """An entry's ticker, normalised, and whether it matches in any case."""
    ticker, any_case = entry, False
    if isinstance(entry, Mapping):
        unknown = sorted(set(entry) - {"ticker", "any_case"})
        ticker, any_case = entry.get("ticker"), entry.get("any_case", False)
        if unknown or not isinstance(any_case, bool):
            raise TickerDictionaryError(
                f"the entry {name!r} -> {entry!r} is neither a ticker nor {{\"ticker\": ..., \"any_case\": true|false}}; "
                f"fix or remove it"
            )
    norm = normalise(ticker) if isinstance(ticker, str) else None
    if norm is None:
        raise TickerDictionaryError(
            f"the entry {name!r} -> {entry!r} names no ticker such as \"TSLA\" or \"BRK.B\" (a letter, then "
            f"letters or digits, then at most one 1-3 character share class after '.', '-' or '/'); fix or remove it"
        )
    return norm, any_case


def extract_tickers(
    text: str, declared: Iterable[str] | None = None, companies: CompanyDictionary | None = None
) -> list[str]:
    """The message's declared tickers, then its cashtags, then dictionary company names (all of
    them: the pipeline keeps the first ``Limits.max_tickers``)."""
    found: list[str] = []
    for t in declared or ():
        norm = normalise(t)
        if norm is not None:
            found.append(norm)
    found += cashtags(text)
    if companies is not None:
        found += companies.find(text)
    return _dedupe(found)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
