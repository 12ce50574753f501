"""PII masking for support text before it is stored in ClickHouse or shown to people.

Pure and dependency-free: ``mask_pii(text)`` returns the text with emails, payment card numbers,
IBANs and phone numbers replaced by typed placeholders, and how many of each it replaced. The raw
text stays only in Kafka, under the topic's retention.

Numbers are masked only when they look like the real thing: cards must pass the Luhn check and
start with a card-network digit (2-6), IBANs must have their country's length and pass mod-97,
phones need an international prefix or a national layout with separators. So amounts, dates,
times, order numbers and tickers are left alone. An unseparated national phone number without a
``+``/``00`` prefix ("4155552671") is indistinguishable from an account or order number and is
not masked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class PiiType(StrEnum):
    email = "EMAIL"
    card = "CARD"
    iban = "IBAN"
    phone = "PHONE"


PLACEHOLDER = {t: f"[{t.value}]" for t in PiiType}


@dataclass(frozen=True)
class Masked:
    text: str
    counts: dict[PiiType, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ISO 13616 registry: country -> IBAN length. Only these countries are masked: with words like
# "FY2021 budget" around, a bare mod-97 check passes one random candidate in 97.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}

# Letters and digits of any script ([^\W_]): jörg@exämple.de is an address too (RFC 6531).
_EMAIL = re.compile(
    r"(?<![\w.%+-])[^\W_][\w.%+-]*@"
    r"(?:[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])"
)
# An IBAN candidate: country and check digits, then the BBAN written compact or in the print
# layout (groups of four, a shorter last group). The print layout may run into a following word;
# _iban_spans cuts the candidate to the country's length.
_IBAN = re.compile(
    r"(?<![\w])[A-Za-z]{2}\d{2}(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,8}(?: [A-Za-z0-9]{1,3}(?!\w))?)"
)
_ALNUM = re.compile(r"[A-Za-z0-9]")
# Digit groups (of any script: full-width ４１１１ too) separated by a single space, no-break or
# thin space, zero-width character or dash; a card is a run of whole groups inside.
_DIGIT_RUN = re.compile(r"(?<![\w+.,/:-])\d+(?:[ \u00a0\u2009\u202f\u200b-\u200d\u2060-]\d+)*(?![\w])")
_GROUP = re.compile(r"\d+")
_INTL_PHONE = re.compile(r"(?<![\w+.,/:-])(?:\+|00)[1-9](?:[ .-]?(?:\(\d{1,5}\)|\d{1,5})){1,8}(?![\w])")
_PHONE_PART = re.compile(r"[ .-]?(?:\(\d+\)|\d+)")
_NANP_PHONE = re.compile(
    r"(?<![\w+.,/:-])(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[-. ])\d{3}[-. ]\d{4}(?![\w]|[-.,/:]\d)"
)
_NATIONAL_PHONE = re.compile(
    r"(?<![\w+.,/:-])(?:\(0\d{1,4}\)|0\d{1,4})(?:[ .-]?\d{2,4}){1,5}(?![\w]|[-.,/:]\d)"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(compact: str) -> bool:
    """mod-97 == 1 over the rearranged IBAN (letters as 10..35); ``compact`` has no spaces."""
    s = compact.upper()
    if len(s) < 15 or not s.isalnum() or not s.isascii():
        return False
    rearranged = s[4:] + s[:4]
    remainder = 0
    for ch in rearranged:
        remainder = (remainder * (100 if ch.isalpha() else 10) + int(ch, 36)) % 97
    return remainder == 1


Span = tuple[int, int]


def _email_spans(text: str) -> list[Span]:
    return [m.span() for m in _EMAIL.finditer(text)]


def _iban_spans(text: str) -> list[Span]:
    spans = []
    pos = 0
    while m := _IBAN.search(text, pos):
        chars = [c.start() for c in _ALNUM.finditer(text, m.start(), m.end())]
        length = IBAN_LENGTHS.get(text[m.start():m.start() + 2].upper(), 0)
        end = chars[length - 1] + 1 if 0 < length <= len(chars) else -1
        compact = "".join(text[i] for i in chars[:length]) if end > 0 else ""
        # The IBAN must end at a word boundary, not in the middle of a longer token.
        if end > 0 and not (end < len(text) and text[end].isalnum()) and iban_valid(compact):
            spans.append((m.start(), end))
            pos = end
        else:
            pos = m.start() + 1
    return spans


def _ascii_digits(digits: str) -> str:
    return digits if digits.isascii() else "".join(str(int(d)) for d in digits)


def _card_spans(text: str) -> list[Span]:
    spans = []
    for m in _DIGIT_RUN.finditer(text):
        groups = list(_GROUP.finditer(m.group()))
        i = 0
        while i < len(groups):
            found = None
            # Longest run of whole groups starting at i that is a valid card number. Only runs of
            # at most 19 digits can be one: looking no further keeps a long string of short digit
            # groups linear instead of cubic (8,000 characters of "1 1 1 …" took minutes).
            last, digits_seen = i, 0
            while last < len(groups) and digits_seen + len(groups[last].group()) <= 19:
                digits_seen += len(groups[last].group())
                last += 1
            for j in range(last, i, -1):
                run = groups[i:j]
                seps = {m.group()[a.end()] for a in run[:-1]}
                digits = _ascii_digits("".join(g.group() for g in run))
                if 13 <= len(digits) <= 19 and len(seps) <= 1 and digits[0] in "23456" and luhn_valid(digits):
                    found = j
                    break
            if found is None:
                i += 1
                continue
            spans.append((m.start() + groups[i].start(), m.start() + groups[found - 1].end()))
            i = found
    return spans


def _intl_phone_spans(text: str) -> list[Span]:
    spans = []
    for m in _INTL_PHONE.finditer(text):
        prefix = 1 if m.group().startswith("+") else 2
        count, end = 0, m.start() + prefix
        # Greedy matching may run into following numbers: keep parts while E.164's 15 digits allow.
        for part in _PHONE_PART.finditer(m.group(), prefix):
            n = sum(ch.isdigit() for ch in part.group())
            if count + n > 15:
                break
            count, end = count + n, m.start() + part.end()
        if count >= 8:
            spans.append((m.start(), end))
    return spans


def _nanp_phone_spans(text: str) -> list[Span]:
    return [m.span() for m in _NANP_PHONE.finditer(text)]


def _national_phone_spans(text: str) -> list[Span]:
    spans = []
    for m in _NATIONAL_PHONE.finditer(text):
        count, end = 0, m.start()
        # As for international numbers: stop before parts that would exceed a national length.
        for part in _PHONE_PART.finditer(m.group()):
            n = sum(ch.isdigit() for ch in part.group())
            if count + n > 12:
                break
            count, end = count + n, m.start() + part.end()
        separated = end - m.start() > count
        if separated and count >= 10:
            spans.append((m.start(), end))
    return spans


def _phone_spans(text: str) -> list[Span]:
    spans: list[Span] = []
    for finder in (_intl_phone_spans, _nanp_phone_spans, _national_phone_spans):
        for s in finder(text):
            if not any(s[0] < e and b < s[1] for b, e in spans):
                spans.append(s)
    return sorted(spans)


# Order matters: emails may hold digits, IBANs hold digit runs that look like cards or phones,
# and cards are longer than phones. Each pass sees the placeholders of the passes before it,
# which contain nothing any later pattern matches.
_PASSES: tuple[tuple[PiiType, Callable[[str], list[Span]]], ...] = (
    (PiiType.email, _email_spans),
    (PiiType.iban, _iban_spans),
    (PiiType.card, _card_spans),
    (PiiType.phone, _phone_spans),
)


def _replace(text: str, spans: list[Span], placeholder: str) -> str:
    out, last = [], 0
    for start, end in spans:
        out.append(text[last:start])
        out.append(placeholder)
        last = end
    out.append(text[last:])
    return "".join(out)


def mask_pii(text: str) -> Masked:
    """``text`` with PII replaced by ``[EMAIL]``, ``[CARD]``, ``[IBAN]``, ``[PHONE]``, and counts."""
    counts: dict[PiiType, int] = {}
    # Cheap precheck: every pattern needs an '@' or a digit.
    if "@" not in text and not any(ch.isdigit() for ch in text):
        return Masked(text, counts)
    for kind, find in _PASSES:
        spans = find(text)
        if spans:
            text = _replace(text, spans, PLACEHOLDER[kind])
            counts[kind] = len(spans)
    return Masked(text, counts)
