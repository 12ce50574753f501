"""PII masking: a planted-PII corpus over real Banking77 sentences, unit cases, and properties.

The corpus is generated here, seeded: real support sentences with generated emails, Luhn-valid
cards of several networks and layouts, mod-97-valid IBANs of several countries, and phone numbers
in international and national layouts planted at different places, some right after a label
("Tel:", "Card No."). Beside it, generated clean numbers (prices, dates, order numbers) and
numbers written right after a phone number. Recall and exact spans per type and the share of clean
texts touched are printed (run with -s) and asserted against the issue's goals.
"""

from __future__ import annotations

import csv
import random
import string
import time
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.pii import IBAN_LENGTHS, PLACEHOLDER, PiiType, iban_valid, luhn_valid, mask_pii
from streams.settings import REPO_ROOT

BANKING77 = REPO_ROOT / "data" / "banking77" / "train.csv"
PLANTS_PER_TYPE = 2000
RECALL_GOAL = 0.99
CLEAN_TOUCHED_MAX = 0.01


# --- generators (each takes a seeded Random) ------------------------------------------------


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _luhn_complete(partial: str) -> str:
    return next(partial + d for d in string.digits if luhn_valid(partial + d))


# network, prefixes, length, layouts (group sizes; empty = unseparated)
_CARD_BRANDS: list[tuple[str, list[str], int, list[tuple[int, ...]]]] = [
    ("visa", ["4"], 16, [(4, 4, 4, 4), ()]),
    ("visa13", ["4"], 13, [()]),
    ("mastercard", ["51", "52", "53", "54", "55", "2221", "2500", "2720"], 16, [(4, 4, 4, 4), ()]),
    ("amex", ["34", "37"], 15, [(4, 6, 5), ()]),
    ("discover", ["6011", "65", "644"], 16, [(4, 4, 4, 4), ()]),
    ("jcb", ["3528", "3589"], 16, [(4, 4, 4, 4)]),
    ("diners", ["36", "38"], 14, [(4, 6, 4), ()]),
    ("unionpay", ["62"], 19, [(6, 13), (4, 4, 4, 4, 3), ()]),
]


def gen_card(rng: random.Random) -> str:
    _, prefixes, length, layouts = rng.choice(_CARD_BRANDS)
    prefix = rng.choice(prefixes)
    number = _luhn_complete(prefix + _digits(rng, length - len(prefix) - 1))
    layout = rng.choice(layouts)
    if not layout:
        return number
    sep = rng.choice([" ", "-", ".", "  "])
    parts, i = [], 0
    for size in layout:
        parts.append(number[i : i + size])
        i += size
    return sep.join(parts)


# BBAN layouts: n = digits, a = upper-case letters, c = alphanumerics.
_BBAN = {
    "DE": "18n", "GB": "4a14n", "FR": "10n11c2n", "NL": "4a10n", "ES": "20n", "IT": "1a10n12c",
    "BE": "12n", "CH": "5n12c", "PL": "24n", "NO": "11n", "AT": "16n", "IE": "4a14n",
}


def _bban(rng: random.Random, layout: str) -> str:
    out, num = [], ""
    for ch in layout:
        if ch.isdigit():
            num += ch
            continue
        pool = {"n": string.digits, "a": string.ascii_uppercase, "c": string.ascii_uppercase + string.digits}[ch]
        out.extend(rng.choice(pool) for _ in range(int(num)))
        num = ""
    return "".join(out)


def _with_check_digits(country: str, bban: str) -> str:
    moved = bban + country + "00"
    remainder = int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{98 - remainder:02d}{bban}"


def gen_iban(rng: random.Random) -> str:
    country = rng.choice(sorted(_BBAN))
    iban = _with_check_digits(country, _bban(rng, _BBAN[country]))
    if rng.random() < 0.5:
        return iban
    return rng.choice([" ", "-"]).join(iban[i : i + 4] for i in range(0, len(iban), 4))


def gen_email(rng: random.Random) -> str:
    first = rng.choice(["john", "maria", "li", "o.connor", "anna-lena", "j", "support", "x", "_jsmith",
                        "o'neil", "mary&john", "sales/eu"])
    local = first + rng.choice(["", ".smith", "_" + _digits(rng, 2), _digits(rng, 4), "+bank", ".k"])
    domain = rng.choice(["gmail.com", "mail.example.co.uk", "web.de", "outlook.fr", "proton.me",
                         "corp-mail.io", "uni.edu", "a.b.c.museum"])
    return f"{local}@{domain}"


def _phone_layouts() -> list[Callable[[random.Random], str]]:
    def area(rng: random.Random) -> str:
        return str(rng.randint(2, 9)) + _digits(rng, 2)

    return [
        lambda r: f"+1 ({area(r)}) {_digits(r, 3)}-{_digits(r, 4)}",
        lambda r: f"+1 {area(r)} {_digits(r, 3)} {_digits(r, 4)}",
        lambda r: f"+1{area(r)}{_digits(r, 7)}",
        lambda r: f"({area(r)}) {_digits(r, 3)}-{_digits(r, 4)}",
        lambda r: f"{area(r)}-{_digits(r, 3)}-{_digits(r, 4)}",
        lambda r: f"{area(r)}.{_digits(r, 3)}.{_digits(r, 4)}",
        lambda r: f"1-{area(r)}-{_digits(r, 3)}-{_digits(r, 4)}",
        lambda r: f"1.{area(r)}.{_digits(r, 3)}.{_digits(r, 4)}",
        lambda r: f"1 ({area(r)}) {_digits(r, 3)}-{_digits(r, 4)}",
        lambda r: f"{area(r)}-{_digits(r, 3)}-{_digits(r, 4)}x{_digits(r, r.randint(1, 4))}",
        lambda r: f"+1 {area(r)} {_digits(r, 3)} {_digits(r, 4)}x{_digits(r, 3)}",
        lambda r: f"+44 20 {_digits(r, 4)} {_digits(r, 4)}",
        lambda r: f"+44 7{_digits(r, 3)} {_digits(r, 6)}",
        lambda r: f"(+44) 20 {_digits(r, 4)} {_digits(r, 4)}",
        lambda r: f"+44 (0) 20 {_digits(r, 4)} {_digits(r, 4)}",
        lambda r: f"020 {_digits(r, 4)} {_digits(r, 4)}",
        lambda r: f"07{_digits(r, 3)} {_digits(r, 6)}",
        lambda r: f"+33 {r.randint(1, 9)} " + " ".join(_digits(r, 2) for _ in range(4)),
        lambda r: f"0{r.randint(1, 9)} " + " ".join(_digits(r, 2) for _ in range(4)),
        lambda r: f"+49 30 {_digits(r, 8)}",
        lambda r: f"+49{r.choice(['151', '160', '176'])}{_digits(r, 8)}",
        lambda r: f"0049 30 {_digits(r, 8)}",
        lambda r: f"030 {_digits(r, 8)}",
        lambda r: f"030/{_digits(r, 8)}",
        lambda r: f"+34 {_digits(r, 3)} {_digits(r, 3)} {_digits(r, 3)}",
        lambda r: f"+91 {r.randint(6, 9)}{_digits(r, 4)} {_digits(r, 5)}",
    ]


_PHONES = _phone_layouts()


def gen_phone(rng: random.Random) -> str:
    return rng.choice(_PHONES)(rng)


GENERATORS: dict[PiiType, Callable[[random.Random], str]] = {
    PiiType.card: gen_card,
    PiiType.iban: gen_iban,
    PiiType.email: gen_email,
    PiiType.phone: gen_phone,
}
_NOUN = {PiiType.card: "card number", PiiType.iban: "IBAN", PiiType.email: "email", PiiType.phone: "phone"}
# Labels written onto the value with no space. An address takes no "." or "-" label: both are
# characters of its local part, so "mail-john@example.com" is one address.
_LABELS = {
    PiiType.card: ["Card:", "CC#:", "Card No.", "card-", "card#"],
    PiiType.iban: ["IBAN:", "iban-", "Acct.", "IBAN#"],
    PiiType.email: ["Email:", "mail#", "E-mail:"],
    PiiType.phone: ["Tel:", "tel.", "Mob:", "ph-", "Phone#"],
}


def plant(rng: random.Random, sentence: str, value: str, noun: str, labels: list[str] | None = None) -> str:
    """Put ``value`` into ``sentence`` the ways people write it: after, before, inside, in brackets,
    after one of ``labels``."""
    where = rng.randrange(6 if labels else 5)
    if where == 5:
        return f"{sentence} {rng.choice(labels or [])}{value} thanks"
    if where == 0:
        return f"{sentence} My {noun} is {value}."
    if where == 1:
        return f"{value}: {sentence}"
    if where == 2:
        words = sentence.split()
        k = rng.randint(0, len(words))
        return " ".join([*words[:k], value, *words[k:]])
    if where == 3:
        return f"{sentence} ({value})"
    return f"{sentence} Reach me at {value}, thanks"


# --- the corpus test ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    with BANKING77.open(newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def test_planted_pii_recall_per_type(sentences: list[str]) -> None:
    rng = random.Random(20240611)
    recall, exact = {}, {}
    misses: dict[PiiType, list[str]] = {}
    for kind, gen in GENERATORS.items():
        found = spot_on = 0
        for _ in range(PLANTS_PER_TYPE):
            sentence = rng.choice(sentences)
            value = gen(rng)
            text = plant(rng, sentence, value, _NOUN[kind], _LABELS[kind])
            masked = mask_pii(text)
            if value not in masked.text and PLACEHOLDER[kind] in masked.text:
                found += 1
            else:
                misses.setdefault(kind, []).append(f"{text!r} -> {masked.text!r}")
            spot_on += masked.text == text.replace(value, PLACEHOLDER[kind])
        recall[kind] = found / PLANTS_PER_TYPE
        exact[kind] = spot_on / PLANTS_PER_TYPE
    for kind in GENERATORS:
        print(f"PII recall {kind.value:<5} {recall[kind]:.2%}  exact span {exact[kind]:.2%}  "
              f"(n={PLANTS_PER_TYPE})")
        for line in misses.get(kind, [])[:3]:
            print("   missed:", line)
    assert all(r >= RECALL_GOAL for r in recall.values()), recall
    # A partly masked value ("Phone:+1 [PHONE]", "[PHONE] 0025") counts as found above.
    assert all(r >= RECALL_GOAL for r in exact.values()), exact


# Clean text: Banking77 support messages, and financial tweets full of amounts, percentages,
# dates, $TICKERS and URLs (Financial PhraseBank is not clean: it holds real press-release phones).
CLEAN_CORPORA = {
    "banking77": BANKING77,
    "twitter_financial_news": REPO_ROOT / "data" / "twitter_financial_news" / "train.csv",
}


@pytest.mark.parametrize("corpus", sorted(CLEAN_CORPORA))
def test_clean_text_is_rarely_touched(corpus: str) -> None:
    with CLEAN_CORPORA[corpus].open(newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    touched = [(s, m) for s in texts if (m := mask_pii(s)).counts]
    rate = len(touched) / len(texts)
    with_digits = sum(any(ch.isdigit() for ch in s) for s in texts)
    by_type = Counter(k.value for _, m in touched for k in m.counts)
    print(f"PII false masking {corpus}: {len(touched)}/{len(texts)} clean texts touched ({rate:.3%}; "
          f"{with_digits} contain digits), by type {dict(by_type)}")
    for s, m in touched[:5]:
        print(f"   {s!r} -> {m.text!r}")
    assert rate <= CLEAN_TOUCHED_MAX


# Numbers in clean support and financial text that masking must leave alone, planted like PII.
_CLEAN_NUMBERS: dict[str, Callable[[random.Random], str]] = {
    "price": lambda r: f"${r.randint(1, 99)},{_digits(r, 3)}.{_digits(r, 2)}",
    "ISO date": lambda r: f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "dated amount": lambda r: f"on {r.randint(1, 28):02d}.{r.randint(1, 12):02d}.2024 {r.randint(10, 99)} EUR",
    "time": lambda r: f"at {r.randint(0, 23):02d}:{r.randint(0, 59):02d}",
    "ISIN": lambda r: r.choice(["US0378331005", "GB0002634946", "DE000BAY0017", "US5949181045"]),
    "ticker move": lambda r: f"$AAPL {r.choice('+-')}{r.randint(0, 9)}.{r.randint(0, 9)}%",
    "version": lambda r: f"v{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
    "quarter": lambda r: f"Q{r.randint(1, 4)} {r.randint(2015, 2030)}",
    "amount": lambda r: f"{r.randint(1, 999)} {_digits(r, 3)} {_digits(r, 3)} GBP",
    "order number": lambda r: f"order #{r.randint(1, 9)}{_digits(r, r.randint(5, 9))}",
    "00 order number": lambda r: f"order #00{_digits(r, r.randint(6, 9))}",
    "00 invoice": lambda r: f"invoice 00{_digits(r, 8)}",
    "item numbers": lambda r: "items " + " ".join(f"{k:03d}" for k in range(1, r.randint(4, 8))),
    "transaction id": lambda r: f"transaction TX-{_digits(r, 8)}-{_digits(r, 4)}",
    "opening hours": lambda r: f"open {r.randint(8, 10)}:00-{r.randint(16, 20)}:00, 24/7 online",
}


def test_clean_numbers_are_rarely_touched(sentences: list[str]) -> None:
    """Clean numbers planted in support sentences, and numbers written right after an international
    phone number ("call +1 212 555 0143 24 hours a day"), which must stay out of its mask."""
    rng = random.Random(20240612)
    touched: Counter[str] = Counter()
    examples: dict[str, str] = {}
    cases = 0
    for name, gen in _CLEAN_NUMBERS.items():
        for _ in range(200):
            text = plant(rng, rng.choice(sentences), gen(rng), "reference")
            cases += 1
            if (masked := mask_pii(text).text) != text:
                touched[name] += 1
                examples.setdefault(name, f"{text!r} -> {masked!r}")
    # Numbers of two digits: German numbers vary in length, and one more digit may still be theirs.
    international = [g for g in _PHONES if g(random.Random(0)).lstrip("(").startswith(("+", "00"))]
    for _ in range(1000):
        phone, after = rng.choice(international)(rng), rng.choice(["24 hours a day", "30 times", "12 months ago"])
        text = f"{rng.choice(sentences)} Call {phone} {after}."
        cases += 1
        if (masked := mask_pii(text).text) != text.replace(phone, PLACEHOLDER[PiiType.phone]):
            touched["number after a phone"] += 1
            examples.setdefault("number after a phone", f"{text!r} -> {masked!r}")
    rate = touched.total() / cases
    print(f"PII false masking of clean numbers: {touched.total()}/{cases} texts touched ({rate:.3%}), "
          f"by layout {dict(touched)}")
    for line in examples.values():
        print("   ", line)
    assert rate <= CLEAN_TOUCHED_MAX


def test_real_press_release_phones_are_masked() -> None:
    text = ("Further information : Aldata Solution Oyj , Thomas Hoyer , CFO , tel. +358 45 670 0491 "
            "Aldata in brief")
    assert mask_pii(text).text == ("Further information : Aldata Solution Oyj , Thomas Hoyer , CFO , "
                                   "tel. [PHONE] Aldata in brief")


# --- unit cases -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 declined",  # fails Luhn
        "card 4111-1111-1111-1112 declined",
        "order 1234567890123 shipped",  # 13 digits, fails Luhn
        "ref 8888888888888888",  # Luhn-valid but no card network starts with 8
        "I paid $1,234.56 on 2024-01-15 at 10:30",
        "transfer of 1 000 000 EUR on 15.01.2024",
        "$TSLA and $AAPL up 5% since 2023",
        "it took 2 weeks and 3 days, 150 GBP",
        "GB82WEST1234569876543",  # one character short for GB
        "Trumps FY2021 budget proposal plans 0.3% rise",  # FY is no IBAN country
        "version 1.2.3.4 and build 20240115",
        "my pin is 1234 and my postcode SW1A 1AA",
        # "00" is no international prefix before an order or item number
        "invoice 0012345678 is unpaid",
        "order #00123456789 never arrived",
        "items 001 002 003 004 005 missing",
        "on 01.02.2024 15 euros were charged",  # a date and an amount, not a trunk-0 phone number
        "v2.3.1 shipped in Q3 2024, ISIN US0378331005 up 3.5%",
    ],
)
def test_ordinary_numbers_are_left_alone(text: str) -> None:
    assert mask_pii(text).text == text


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("card 4111 1111 1111 1111 twice", "card [CARD] twice", PiiType.card),
        ("amex 3782-822463-10005.", "amex [CARD].", PiiType.card),
        ("paid 20 with 5500005555555559 today", "paid 20 with [CARD] today", PiiType.card),
        ("IBAN DE89 3704 0044 0532 0130 00 TODAY", "IBAN [IBAN] TODAY", PiiType.iban),
        ("to gb82west12345698765432.", "to [IBAN].", PiiType.iban),
        ("mail john.doe+x@mail.example.co.uk.", "mail [EMAIL].", PiiType.email),
        ("call +44 20 7946 0958 on 12 May", "call [PHONE] on 12 May", PiiType.phone),
        ("call (415) 555-2671 now", "call [PHONE] now", PiiType.phone),
        ("ring 06 12 34 56 78", "ring [PHONE]", PiiType.phone),
        # written outside ASCII: each was left as it was
        ("mail jörg@example.com please", "mail [EMAIL] please", PiiType.email),
        ("mail jorg@exämple.de", "mail [EMAIL]", PiiType.email),
        ("card ４１１１ １１１１ １１１１ １１１１ ok", "card [CARD] ok", PiiType.card),
        ("card 4111\u00a01111\u00a01111\u00a01111, lost", "card [CARD], lost", PiiType.card),
        ("card 4111\u200b1111\u200b1111\u200b1111", "card [CARD]", PiiType.card),
        # after a label with no space: each was left as it was
        ("Card No.4111111111111111", "Card No.[CARD]", PiiType.card),
        ("Tel:+44 20 7946 0958", "Tel:[PHONE]", PiiType.phone),
        ("ph-020 7946 0958", "ph-[PHONE]", PiiType.phone),
        # layouts that were left as they were, or in part
        ("call 1-800-555-0199 now", "call [PHONE] now", PiiType.phone),
        ("call 212-555-0143x12 now", "call [PHONE] now", PiiType.phone),
        ("ring (+44) 20 7946 0958", "ring [PHONE]", PiiType.phone),
        ("dial +44 0 20 7162 0025 Europe", "dial [PHONE] Europe", PiiType.phone),
        ("ruf 030/12345678 an", "ruf [PHONE] an", PiiType.phone),
        ("card 4111.1111.1111.1111 lost", "card [CARD] lost", PiiType.card),
        ("IBAN DE89-3704-0044-0532-0130-00", "IBAN [IBAN]", PiiType.iban),
        ("mail _jsmith@gmail.com", "mail [EMAIL]", PiiType.email),
        ("mail j.o'neil@example.com", "mail [EMAIL]", PiiType.email),
        ("mail 'john@example.com'", "mail '[EMAIL]'", PiiType.email),
        # the number after a phone number is not part of it
        ("call +1 212 555 0143 24 hours", "call [PHONE] 24 hours", PiiType.phone),
    ],
)
def test_pii_is_replaced_by_its_placeholder(text: str, expected: str, kind: PiiType) -> None:
    masked = mask_pii(text)
    assert masked.text == expected
    assert masked.counts == {kind: 1}


def test_iban_with_bad_check_digits_is_not_an_iban() -> None:
    assert PiiType.iban not in mask_pii("IBAN DE89 3704 0044 0532 0130 01 is wrong").counts
    # Its BBAN digits happen to pass Luhn, so they are masked as a card: erring towards masking.
    assert mask_pii("IBAN DE89 3704 0044 0532 0130 01 is wrong").text == "IBAN DE89 [CARD] is wrong"
    assert mask_pii("IBAN GB82 WEST 1234 5698 7654 33 is wrong").counts == {}


def test_counts_per_type() -> None:
    masked = mask_pii("a@b.io or c@d.io, card 4111111111111111, phone +1 415 555 2671")
    assert masked.counts == {PiiType.email: 2, PiiType.card: 1, PiiType.phone: 1}
    assert masked.total == 4


def test_a_long_string_of_short_digit_groups_is_masked_in_linear_time() -> None:
    """Within the 8,000 characters a support message may have. The card search tried every run of
    groups from every start, cubic in the groups: 4,000 took about 20 minutes and stalled the
    worker's partition on every redelivery. It now takes a fraction of a second; the bound is a
    guard against the cubic search, not a speed target."""
    text = " ".join(["1"] * 3_990) + " 4111 1111 1111 1111"
    started = time.perf_counter()
    masked = mask_pii(text)
    assert time.perf_counter() - started < 10
    assert masked.text.endswith(" 1 [CARD]") and masked.counts == {PiiType.card: 1}


MESSAGE_LIMIT = 8_000  # characters a support message may have
# Hostile text: a unit of size k, repeated or cut to the length wanted.
_HOSTILE: dict[str, Callable[[int], str]] = {
    "+1, digits, x": lambda k: "+1" + "1" * k + "x ",
    "00, digits, x": lambda k: "00" + "1" * k + "x ",
    "+1, dashed digits, x": lambda k: "+1" + "-1" * k + "x ",
    "trunk 0, spaced pairs, x": lambda k: "01" + " 11" * k + "x ",
    "+ groups": lambda k: "+1 " * k + "+",
    "brackets": lambda k: "(" * k + "1" * k + " ",
    "@ signs": lambda k: "a@" * k + "a ",
    "dotted domain": lambda k: "x@" + "a." * k + "1 ",
    "IBAN-like groups": lambda k: "DE89" + " 1234" * k + "x ",
    "IBAN-like letters": lambda k: "DE89" + "A" * k + " ",
    "card-like groups": lambda k: "4111 " * k + "x",
    "single digits": lambda k: "3 " * k + "x",
    "dotted digits": lambda k: "3." * k + "x ",
}


def _hostile_text(shape: str, k: int, length: int) -> str:
    unit = _HOSTILE[shape](k)
    return (unit * (length // len(unit) + 1))[:length]


def _growth(small: str, large: str) -> float:
    """How many times longer ``large`` takes to mask than ``small``: the best of five timings of
    each, taken in turns so that both see the same load on the machine."""
    best = {small: float("inf"), large: float("inf")}
    for _ in range(5):
        for text in (small, large):
            started = time.perf_counter()
            mask_pii(text)
            best[text] = min(best[text], time.perf_counter() - started)
    return best[large] / best[small]


@pytest.mark.parametrize("shape", sorted(_HOSTILE))
def test_hostile_text_is_masked_in_time_linear_in_its_length(shape: str) -> None:
    """Masking runs in the model thread, and a message that takes long holds its whole batch past
    the stall watchdog. The card search once tried every run of groups (cubic: 8,000 characters of
    "1 1 1 …" took minutes); the phone pattern tried every split of a digit run into parts (8,000
    characters of "+1", 25 digits and "x" took 7 s, so ten such messages restarted the worker on
    every redelivery). Times are compared between sizes of one shape, so what is checked is growth,
    whatever the machine's speed:

    - 8,000 characters of short units take about as long when the units are 4 times longer (under
      8 times here, for noise on a loaded machine): a search over the splits of each unit grows
      with a power of its size (the phone pattern: 100 times);
    - one unit filling the text takes about 4 times longer at 4 times the length (under 10 times
      here, for noise and caches), not 16 or 64 times as a quadratic or cubic search would.
    """
    per_unit = _growth(_hostile_text(shape, 10, MESSAGE_LIMIT), _hostile_text(shape, 40, MESSAGE_LIMIT))
    quarter, whole = MESSAGE_LIMIT // 4, MESSAGE_LIMIT
    per_length = _growth(_hostile_text(shape, quarter, quarter), _hostile_text(shape, whole, whole))
    print(f"hostile {shape!r}: units 4x longer {per_unit:.2f}x the time, text 4x longer {per_length:.2f}x")
    assert per_unit < 8 and per_length < 10, (per_unit, per_length)


def test_checks() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")
    assert all(len(c) == 2 and 15 <= n <= 34 for c, n in IBAN_LENGTHS.items())


# --- properties -----------------------------------------------------------------------------

_context = st.text(alphabet=string.ascii_letters + string.digits + " .,!?'$€£:-", max_size=40)


@st.composite
def planted_text(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.sampled_from(sorted(GENERATORS)))
    value = GENERATORS[kind](random.Random(draw(st.integers(0, 2**32))))
    return f"{draw(_context)} {value} {draw(_context)}", value


@settings(max_examples=400, deadline=None)
@given(planted_text())
def test_masked_text_never_contains_the_planted_value(case: tuple[str, str]) -> None:
    text, value = case
    assert value not in mask_pii(text).text


@settings(max_examples=400, deadline=None)
@given(st.one_of(planted_text().map(lambda c: c[0]), st.text(max_size=200)))
def test_masking_is_idempotent(text: str) -> None:
    once = mask_pii(text)
    twice = mask_pii(once.text)
    assert twice.text == once.text
    assert twice.counts == {}
