"""The promotion gate and the annotator-noise defence. Pure: labels in, decisions with reasons out.

Order of defence against a bad label source (e.g. one annotator who flips labels):
1. ``screen_annotators`` drops annotators who disagree with the champion where the champion is
   confident, then those who disagree with the remaining others on shared items, before anything is
   trained on their labels;
2. ``consensus`` keeps one label per message (majority of the remaining annotators; ties dropped);
3. ``judge`` refuses a challenger that loses accuracy on the frozen gold set, which no annotator
   touches: the backstop when poison got past 1 and 2 (it also poisons the held-out corrections,
   so "better on recent corrections" alone would not catch it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from feedback.contracts import Correction
from streams.settings import VigilSettings


def accuracy(true: Sequence[str], pred: Sequence[str]) -> float:
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} labels but {len(pred)} predictions")
    return sum(t == p for t, p in zip(true, pred, strict=True)) / len(true) if true else 0.0


# --- annotators ----------------------------------------------------------------------------------


def balanced_agreement(labels: Sequence[str], reference: Sequence[str]) -> float:
    """Mean over the reference's classes of how often ``labels`` matches it on that class.

    Raw agreement would let a neg<->pos flipper through on neutral-heavy data (65% of financial
    tweets are neutral: flipping all the rest still "agrees" 65%); balanced, it scores 1/3. Unlike
    Cohen's kappa it stays meaningful when the reference uses one class only (a champion that is
    confident about neutral texts alone)."""
    if len(labels) != len(reference) or not labels:
        raise ValueError(f"need two equally long non-empty label lists, got {len(labels)} and {len(reference)}")
    hits: Counter[str] = Counter()
    totals = Counter(reference)
    for x, y in zip(labels, reference, strict=True):
        hits[y] += x == y
    return sum(hits[k] / totals[k] for k in totals) / len(totals)


@dataclass(frozen=True, slots=True)
class ScreenConfig:
    min_agreement: float  # balanced agreement
    min_evidence: int  # items needed before an annotator can be judged on a measure
    confident: float  # champion confidence at or above which its prediction is evidence

    @classmethod
    def from_settings(cls, s: VigilSettings) -> ScreenConfig:
        return cls(s.annotator_min_agreement, s.annotator_min_evidence, s.annotator_confident)


@dataclass(frozen=True, slots=True)
class AnnotatorReport:
    annotator: str
    labels: int
    shared: int  # items also labelled by others, with a clear majority among those others
    agree_shared: float | None  # balanced agreement with the others' majority on those items
    confident: int  # items where the champion was confident
    agree_confident: float | None  # balanced agreement with the champion's confident predictions
    dropped_because: str | None


@dataclass(frozen=True, slots=True)
class Screened:
    kept: list[Correction]
    reports: list[AnnotatorReport]

    @property
    def dropped(self) -> dict[str, str]:
        return {r.annotator: r.dropped_because for r in self.reports if r.dropped_because}


def latest_per_annotator(corrections: Sequence[Correction]) -> list[Correction]:
    """One correction per (message, annotator): the latest, as the store's key intends."""
    latest: dict[tuple[str, str], Correction] = {}
    for c in sorted(corrections, key=lambda c: c.created_at):
        latest[(c.message_id, c.annotator)] = c
    return sorted(latest.values(), key=lambda c: (c.created_at, c.correction_id))


def screen_annotators(
    corrections: Sequence[Correction],
    champion: Mapping[str, tuple[str, float]],
    cfg: ScreenConfig,
) -> Screened:
    """Drop annotators whose labels look systematically wrong.

    ``champion`` maps message_id -> (champion label, confidence). Agreement with the champion is
    only measured where it is confident, so an annotator who fixes the champion's uncertain
    mistakes (the queue's whole point) is not punished for it. That check comes first, and the
    others' majority is then taken among the annotators it kept: disagreement between two people is
    symmetric, so judged together a flipper took down the honest annotator sharing its items, though
    the champion's confident predictions said which of them was right.
    """
    corrections = latest_per_annotator(corrections)
    by_message: dict[str, dict[str, str]] = defaultdict(dict)
    by_annotator: dict[str, list[Correction]] = defaultdict(list)
    for c in corrections:
        by_message[c.message_id][c.annotator] = c.human_label
        by_annotator[c.annotator].append(c)

    vs_champion = {a: _vs_champion(own, champion, cfg.confident) for a, own in by_annotator.items()}
    failed_champion = {a: _failed(pairs, cfg, "the champion's confident predictions")
                       for a, pairs in vs_champion.items()}
    trusted = {a for a, why in failed_champion.items() if why is None}
    reports: list[AnnotatorReport] = []
    for annotator, own in sorted(by_annotator.items()):
        vs_others = _vs_others(own, annotator, by_message, trusted)
        why = failed_champion[annotator] or _failed(vs_others, cfg, "the other annotators on shared items")
        reports.append(AnnotatorReport(
            annotator, len(own), len(vs_others[0]), _agreement(vs_others), len(vs_champion[annotator][0]),
            _agreement(vs_champion[annotator]), why,
        ))
    dropped = {r.annotator for r in reports if r.dropped_because}
    return Screened([c for c in corrections if c.annotator not in dropped], reports)


_Pairs = tuple[list[str], list[str]]  # an annotator's labels, and the reference's on the same items


def _vs_champion(own: Sequence[Correction], champion: Mapping[str, tuple[str, float]], confident: float) -> _Pairs:
    pairs: _Pairs = ([], [])
    for c in own:
        if c.message_id in champion and champion[c.message_id][1] >= confident:
            pairs[0].append(c.human_label)
            pairs[1].append(champion[c.message_id][0])
    return pairs


def _vs_others(own: Sequence[Correction], annotator: str, by_message: Mapping[str, Mapping[str, str]],
               trusted: set[str]) -> _Pairs:
    """Against the clear majority of the trusted others, on the items they also labelled."""
    pairs: _Pairs = ([], [])
    for c in own:
        others = Counter(lbl for a, lbl in by_message[c.message_id].items() if a != annotator and a in trusted)
        top = others.most_common(2)
        if top and (len(top) == 1 or top[0][1] > top[1][1]):
            pairs[0].append(c.human_label)
            pairs[1].append(top[0][0])
    return pairs


def _agreement(pairs: _Pairs) -> float | None:
    return balanced_agreement(*pairs) if pairs[0] else None


def _failed(pairs: _Pairs, cfg: ScreenConfig, reference: str) -> str | None:
    if len(pairs[0]) < cfg.min_evidence or (k := balanced_agreement(*pairs)) >= cfg.min_agreement:
        return None
    return f"balanced agreement {k:.2f} with {reference} on {len(pairs[0])} items (< {cfg.min_agreement})"


def consensus(corrections: Sequence[Correction]) -> list[tuple[Correction, str]]:
    """One (representative correction, majority label) per message, oldest message first; ties are
    dropped because no label can be trusted for them.

    A message is as old as its FIRST label, and that label represents it: a second annotator who
    confirms it later must not move a message an earlier round trained on (and the champion
    learned) into the newest part, which is held out to judge the next challenger."""
    by_message: dict[str, list[Correction]] = defaultdict(list)
    for c in latest_per_annotator(corrections):
        by_message[c.message_id].append(c)
    out = []
    for cs in by_message.values():
        top = Counter(c.human_label for c in cs).most_common(2)
        if len(top) == 1 or top[0][1] > top[1][1]:
            out.append((min(cs, key=lambda c: c.created_at), top[0][0]))
    return sorted(out, key=lambda pair: (pair[0].created_at, pair[0].message_id))


# --- the gate ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateConfig:
    max_gold_drop: float
    min_recent_gain: float
    min_recent: int

    @classmethod
    def from_settings(cls, s: VigilSettings) -> GateConfig:
        return cls(s.gate_max_gold_drop, s.gate_min_recent_gain, s.gate_min_recent)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """True labels and both models' predictions on one evaluation set."""

    true: Sequence[str]
    champion: Sequence[str]
    challenger: Sequence[str]


@dataclass(frozen=True, slots=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return ("promote: " if self.promote else "keep the champion: ") + "; ".join(self.reasons)


_ROUNDING = 1e-9


def judge(gold: Evaluation, recent: Evaluation, cfg: GateConfig) -> GateDecision:
    """Promote only if the challenger holds up on gold (drop <= max_gold_drop) AND beats the
    champion on held-out recent corrections by more than min_recent_gain. Every failed condition
    is a reason; the figures go to the model event."""
    if not gold.true:
        raise ValueError("the gate needs a non-empty gold set")
    g_champ, g_chall = accuracy(gold.true, gold.champion), accuracy(gold.true, gold.challenger)
    figures = {"gold_n": float(len(gold.true)), "gold_champion": g_champ, "gold_challenger": g_chall,
               "recent_n": float(len(recent.true))}
    refusals: list[str] = []
    passes: list[str] = []
    drop = g_champ - g_chall
    # Accuracies are ratios of counts: 0.90 - 0.89 is 0.010000000000000009, and a drop of exactly
    # the tolerance must pass whatever the float rounding (as a gain of exactly the minimum must not).
    if drop > cfg.max_gold_drop + _ROUNDING:
        refusals.append(f"gold accuracy falls {g_champ:.4f} -> {g_chall:.4f} (drop {drop:.4f} > {cfg.max_gold_drop})")
    else:
        passes.append(f"gold accuracy {g_champ:.4f} -> {g_chall:.4f} (tolerance {cfg.max_gold_drop})")
    if len(recent.true) < cfg.min_recent:
        refusals.append(f"only {len(recent.true)} held-out recent corrections (< {cfg.min_recent}): no evidence of gain")
    else:
        r_champ, r_chall = accuracy(recent.true, recent.champion), accuracy(recent.true, recent.challenger)
        figures |= {"recent_champion": r_champ, "recent_challenger": r_chall}
        if r_chall - r_champ > cfg.min_recent_gain + _ROUNDING:
            passes.append(f"recent corrections {r_champ:.4f} -> {r_chall:.4f}")
        else:
            refusals.append(f"no gain on {len(recent.true)} held-out recent corrections: {r_champ:.4f} -> {r_chall:.4f} "
                            f"(needs > +{cfg.min_recent_gain})")
    return GateDecision(not refusals, refusals or passes, figures)
