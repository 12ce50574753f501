"""PII masking for support text before it is stored in ClickHouse or shown to people.

Pure and dependency-free: ``mask_pii(text)`` returns the text with emails, payment card numbers,
IBANs and phone numbers replaced by typed placeholders, and how many of each it replaced. The raw
text stays only in Kafka, under the topic's retention.

Numbers are masked only when they look like the real thing: cards must pass the Luhn check and
start with a card-network digit (2-6), IBANs must have their country's length and pass mod-97,
phones need an international prefix or a national layout with separators. So amounts, dates,
times, order numbers and tickers are left alone. An unseparated national phone number without a
``+``/``00`` prefix ("4155552671") is indistinguishable from an account or order number and is
not masked. A number glued to a word ("FY2021") or continuing another through punctuation
("10:30", "1,234.56") is not one; after a label ("Tel:", "Card No.", "CC#:") it is.

Hostile text costs time linear in its length: no pattern can match a run in more than one way.
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

# The patterns below match maximal runs, one way only: possessive quantifiers (++, *+) and
# separators that are never digits leave the regex engine nothing to backtrack over. Which part of
# a run is PII (how many digits, where a number ends) is decided in code. A pattern that tried the
# splits of a digit run into parts took 35 ms for one "+1", 40 digits and "x", 7 s for a message
# of them, and a batch of such messages held the model thread past the stall watchdog.

# An address's local part: RFC 5322 characters that people use (o'neil, john/doe, mary&john). The
# pattern starts only where such a run starts, so a run is read once; _email_spans drops the leading
# punctuation ("'john@…'" keeps its quote). Letters and digits of any script ([^\W_]): jörg@exämple.de
# is an address too (RFC 6531).
_EMAIL = re.compile(
    r"(?<![\w.%+'/&=-])[\w.%+'/&=-]++@"
    r"(?:[^\W_]++(?:-++[^\W_]++)*+\.)+[^\W\d_]{2,24}(?![\w-])"
)
_LOCAL_PUNCTUATION = ".%+'/&=-"
# An IBAN candidate: country and check digits, then the BBAN written compact or in the print
# layout (groups of four split by spaces or dashes, a shorter last group). The print layout may run
# into a following word; _iban_spans cuts the candidate to the country's length.
_IBAN = re.compile(
    r"(?<![\w])[A-Za-z]{2}\d{2}"
    r"(?:[A-Za-z0-9]{11,30}|(?:[ -][A-Za-z0-9]{4}){2,8}(?:[ -][A-Za-z0-9]{1,3}(?!\w))?)"
)
_ALNUM = re.compile(r"[A-Za-z0-9]")
# What separates the digit groups of a card or phone number: one or two spaces (no-break and thin
# ones too), a zero-width character, or one dash, dot or slash. Digits of any script: full-width
# ４１１１ too.
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015"
_SEP = rf"(?:[ \u00a0\u2009\u202f]{{1,2}}|[\u200b-\u200d\u2060]|[-./{_DASHES}])"
# A maximal run of digit groups; a card is a run of whole groups inside.
_DIGIT_RUN = re.compile(rf"\d++(?:{_SEP}\d++)*+")
_GROUP = re.compile(r"\d+")
_ANY_DIGIT = re.compile(r"\d")
# A maximal run of phone groups: digits, a code in brackets ("(212)", "(0)"), a leading "+" or
# "(+44)". Brackets may touch their neighbours ("(212)555-0143"); digits never touch digits. A
# whole number in brackets ("(+12125550143)") is matched inside them.
_PHONE_RUN = re.compile(
    rf"(?:\+?\d++|\(\+\d{{1,3}}+\)|\(\d{{1,5}}+\))(?:{_SEP}?\(\d{{1,5}}+\)|(?<=\))\d++|{_SEP}\d++)*+"
)
_PHONE_GROUP = re.compile(r"\(\+?\d+\)|\+?\d+")
# An extension written onto the number: "212-555-0143x12".
_EXTENSION = re.compile(r"[xX]\d{1,6}(?!\w)")
# Punctuation that, right after a digit, makes what follows part of the same number: a time
# "10:30", a decimal "1.5", "1,234", a date "2024-01-15", "24/7". After a word it is a label:
# "Tel:", "Card No.", "card-", "CC#:".
_NUMBER_JOINERS = ".,:/-" + _DASHES


def luhn_valid(digits: str) -> bool:
    return _luhn_valid_prefixes(digits)[-1]


def _luhn_valid_prefixes(digits: str) -> list[bool]:
    """Whether ``digits[:k]`` passes the Luhn check, for every k, in one pass. Luhn doubles every
    second digit counting from the last, so prefixes of even and of odd length double different
    digits: both sums are kept."""
    valid, sums = [True], [0, 0]  # sums[p]: the digits at positions of parity p doubled
    for position, ch in enumerate(digits):
        d = ord(ch) - 48
        parity = position % 2
        sums[parity] += d * 2 - 9 if d > 4 else d * 2
        sums[1 - parity] += d
        valid.append(sums[1 - parity] % 10 == 0)
    return valid


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


def _stands_alone_before(text: str, start: int) -> bool:
    """Whether a number may start at ``start``: not glued to a word or number before it ("FY2021",
    "v2", "AA10123"), nor continuing one through punctuation (_NUMBER_JOINERS after a digit)."""
    if start == 0:
        return True
    before = text[start - 1]
    if before.isalnum() or before == "_":
        return False
    return not (before in _NUMBER_JOINERS and start >= 2 and text[start - 2].isdigit())


def _stands_alone_after(text: str, end: int) -> bool:
    """Whether a number may end at ``end``: not glued to a word after it ("1Z999", "0x8007"), nor
    continued through punctuation and a digit ("10:30", "1,234")."""
    if end == len(text):
        return True
    after = text[end]
    if after.isalnum() or after == "_":
        return False
    return not (after in _NUMBER_JOINERS and end + 1 < len(text) and text[end + 1].isdigit())


def _email_spans(text: str) -> list[Span]:
    spans = []
    for m in _EMAIL.finditer(text):
        local = m.group()[: m.group().index("@")]
        start = m.start() + len(local) - len(local.lstrip(_LOCAL_PUNCTUATION))
        if text[start] != "@":
            spans.append((start, m.end()))
    return spans


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
        if m.end() - m.start() < 13:  # too short for 13 digits: most numbers in text
            continue
        groups = list(_GROUP.finditer(text, m.start(), m.end()))
        digits = [_ascii_digits(g.group()) for g in groups]
        seps = [text[a.end():b.start()] for a, b in zip(groups, groups[1:])]
        # After a "+" the digits are a phone number's.
        first = 0 if _stands_alone_before(text, m.start()) and text[m.start() - 1 : m.start()] != "+" else 1
        may_end_run = _stands_alone_after(text, m.end())
        i = first
        while i < len(groups):
            found = None
            # Longest run of whole groups starting at i, written with one separator, that is a
            # valid card number. Only runs of at most 19 digits can be one: looking no further keeps
            # a long string of short digit groups linear instead of cubic (8,000 characters of
            # "1 1 1 …" took minutes).
            last, seen, counts = i, 0, []
            while (digits[i][0] in "23456" and last < len(groups) and seen + len(digits[last]) <= 19
                   and (last <= i + 1 or seps[last - 1] == seps[i])):
                seen += len(digits[last])
                counts.append(seen)
                last += 1
            valid = _luhn_valid_prefixes("".join(digits[i:last])) if last > i else []
            for j in range(last, i, -1):
                if counts[j - i - 1] < 13:
                    break
                if (j < len(groups) or may_end_run) and valid[counts[j - i - 1]]:
                    found = j
                    break
            if found is None:
                i += 1
                continue
            spans.append((groups[i].start(), groups[found - 1].end()))
            i = found
    return spans


# ITU-T E.164 country codes are a prefix code: 1 and 7 are whole codes, these 44 are two digits
# long, and every other code three.
_TWO_DIGIT_COUNTRY_CODES = frozenset(
    "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62 63 64 "
    "65 66 81 82 84 86 90 91 92 93 94 95 98".split()
)
# How many digits a number has after its country code, at most, where the country's plan is well
# known. Past them a group after a space is the next number ("+1 212 555 0143 24 hours"), while
# one joined by a dash is an extension ("+49 30 1234567-890"); elsewhere only E.164's 15 digits in
# all bound a number.
_NATIONAL_DIGITS = {
    "1": 10, "7": 10, "27": 9, "31": 9, "32": 9, "33": 9, "34": 9, "39": 11, "41": 9, "44": 10,
    "45": 8, "47": 8, "48": 9, "49": 11, "52": 10, "55": 11, "61": 9, "65": 8, "81": 10, "86": 11,
    "90": 10, "91": 10, "351": 9, "353": 9, "971": 9,
}
_NANP_SEPARATORS = frozenset(" \u00a0-." + _DASHES)


def _country_code_length(digits: str) -> int:
    if digits[0] in "17":
        return 1
    return 2 if digits[:2] in _TWO_DIGIT_COUNTRY_CODES else 3


@dataclass(frozen=True)
class _PhoneGroup:
    start: int
    end: int
    digits: str  # ASCII
    sep: str  # what joins it to the group before: "" for the first, or next to a bracket
    plus: bool
    bracketed: bool


def _phone_groups(text: str, run: re.Match[str]) -> list[_PhoneGroup]:
    groups, last = [], run.start()
    for g in _PHONE_GROUP.finditer(text, run.start(), run.end()):
        token = g.group()
        groups.append(_PhoneGroup(g.start(), g.end(), _ascii_digits(token.strip("+()")),
                                  text[last:g.start()], "+" in token, token.endswith(")")))
        last = g.end()
    return groups


# Each finder below looks for a phone number starting at groups[i] and returns the index after its
# last group, or None. ``ends[j]`` is where a number whose last group is groups[j - 1] ends in the
# text (past an extension), or None where one may not end: inside a number joined by a dash, dot
# or slash, or glued to what follows the run.


def _international(groups: list[_PhoneGroup], i: int, ends: list[int | None]) -> int | None:
    """"+44 20 7946 0958", "(+44) 20 …", "+44 (0) 20 …", "0044 20 …": 8 to 15 digits."""
    first = groups[i]
    if first.plus:
        digits = first.digits
    elif not first.bracketed and first.digits.startswith("00") and len(first.digits) > 2:
        digits = first.digits[2:]
        # "00" must be followed by exactly a country code, and the number by a digit other than a
        # trunk 0 (Italy keeps its 0): "0012345678", "001 002 003" are order and item numbers.
        if len(digits) != _country_code_length(digits) or i + 1 == len(groups):
            return None
        if groups[i + 1].digits.startswith("0") and digits != "39":
            return None
    else:
        return None
    if digits[0] == "0":
        return None
    code_length = _country_code_length(digits)
    if len(digits) < code_length:
        return None
    country = digits[:code_length]
    complete = _NATIONAL_DIGITS.get(country, 15 - code_length)
    # A trunk 0 written after the country code ("+44 (0) 20 …", "+44 0 20 …", "+44 020 …") is not
    # dialled from abroad; Italy's 0 is part of the number.
    national = digits[code_length:] or (groups[i + 1].digits if i + 1 < len(groups) else "")
    if national.startswith("0") and country != "39":
        complete += 1
    count, j, best = len(digits), i + 1, None
    if count > 15 or count - code_length > complete:
        return None
    while True:
        if count >= 8 and ends[j] is not None:
            best = j
        if j == len(groups):
            return best
        longer = count + len(groups[j].digits)
        if longer > 15 or (groups[j].sep.isspace() and longer - code_length > complete):
            return best
        count, j = longer, j + 1


def _north_american(groups: list[_PhoneGroup], i: int, ends: list[int | None]) -> int | None:
    """"(212) 555-0143", "212.555.0143", with a trunk 1: "1-800-555-0199", "1 (800) 555-0199"."""
    k = i
    if groups[k].digits == "1" and not groups[k].bracketed and k + 1 < len(groups) and (
        groups[k + 1].sep in _NANP_SEPARATORS
    ):
        k += 1
    if k + 3 > len(groups):
        return None
    area, exchange, line = groups[k : k + 3]
    area_ok = len(area.digits) == 3 and area.digits[0] not in "01"
    exchange_sep_ok = exchange.sep in _NANP_SEPARATORS or (area.bracketed and exchange.sep in ("", " "))
    shape_ok = (
        area_ok and not area.plus and exchange_sep_ok and len(exchange.digits) == 3 and not exchange.bracketed
        and len(line.digits) == 4 and not line.bracketed and line.sep in _NANP_SEPARATORS
    )
    return k + 3 if shape_ok and ends[k + 3] is not None else None


def _national(groups: list[_PhoneGroup], i: int, ends: list[int | None]) -> int | None:
    """A trunk 0 and 10 to 12 digits in groups: "020 7946 0958", "06 12 34 56 78", "(02) 9374 4000",
    "030/12345678", and an extension joined by a dash ("030 1234567-890"). Unseparated
    ("4155552671") it cannot be told from an account number."""
    first = groups[i]
    if first.plus or not (2 <= len(first.digits) <= 5 and first.digits[0] == "0" and first.digits[1] != "0"):
        return None
    # A date and a number after it: "on 01.02.2024 15 euros were charged".
    if i + 2 < len(groups) and [len(g.digits) for g in groups[i : i + 3]] == [2, 2, 4] and (
        groups[i + 1].sep == groups[i + 2].sep and groups[i + 1].sep in (".", "/", "-")
    ):
        return None
    count, best = len(first.digits), None
    for j in range(i + 1, len(groups)):
        group = groups[j]
        longer = count + len(group.digits)
        # Without the country the number's length is unknown: "06 12 34 56 78 24" may be French and
        # a number after it, or German in pairs ("0221 12 34 56 78"). It is masked whole.
        if group.bracketed or len(group.digits) < 2 or longer > (12 if group.sep.isspace() else 15):
            break
        count = longer
        if count >= 10 and ends[j + 1] is not None:
            best = j + 1
    return best


def _phone_spans(text: str) -> list[Span]:
    spans = []
    for run in _PHONE_RUN.finditer(text):
        if run.end() - run.start() < 8:  # too short for the 8 digits of the shortest phone number
            continue
        groups = _phone_groups(text, run)
        # A number may end where a space separates it from the next group (not a dash, dot or
        # slash, which join the groups of one number), or at the end of the run.
        ends: list[int | None] = [None] * (len(groups) + 1)
        for j in range(1, len(groups)):
            ends[j] = groups[j - 1].end if groups[j].sep.isspace() else None
        if _stands_alone_after(text, run.end()):
            ends[-1] = run.end()
        elif extension := _EXTENSION.match(text, run.end()):
            ends[-1] = extension.end()
        i = 0
        while i < len(groups):
            starts = _stands_alone_before(text, run.start()) if i == 0 else groups[i].sep.isspace()
            end = None
            if starts:
                end = _international(groups, i, ends) or _north_american(groups, i, ends) or _national(groups, i, ends)
            if end is None:
                i += 1
                continue
            spans.append((groups[i].start, ends[end]))
            i = end
    return spans


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
    if "@" not in text and not _ANY_DIGIT.search(text):
        return Masked(text, counts)
    for kind, find in _PASSES:
        spans = find(text)
        if spans:
            text = _replace(text, spans, PLACEHOLDER[kind])
            counts[kind] = len(spans)
    return Masked(text, counts)
