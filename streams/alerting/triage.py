"""Live support triage: route each scored message to its queue, alert on urgent intents, escalate
urgent tickets nobody acknowledged within their SLA, spot spikes in an intent's volume, and
calibrate the confidence below which a person triages instead of the model."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from models.registry import ModelCard
from models.triage_mapping import TriageMapping
from streams.alerting.baselines import KeyedBaselines, from_overlapping, tiles_history, winsorized
from streams.alerting.contracts import (
    HUMAN_TRIAGE,
    Alert,
    ContributingMessage,
    Severity,
    TriageTicket,
    as_aware,
    sla_breach_id,
)
from streams.alerting.rules import (
    Fed,
    IntentSpikeRule,
    RulesError,
    check_geometry,
    cooldown_from_state,
    cooling,
    geometry,
    geometry_changes,
)
from streams.alerting.windows import HoppingWindows, WindowFigures, WindowSpec
from streams.contracts import Kind, ScoredMessage


def queue_topic(prefix: str, queue: str) -> str:
    """The Kafka topic of one queue's tickets, e.g. ``vigil.triage.cards``."""
    return f"{prefix}{queue}"


def triage_topics(prefix: str, mapping: TriageMapping) -> list[str]:
    """Every topic a ticket can be published to: each mapped queue and human triage."""
    return [queue_topic(prefix, q) for q in (*mapping.queues, HUMAN_TRIAGE)]


class UnroutableIntent(KeyError):
    """The model predicted an intent the routing table has no route for."""

    def __str__(self) -> str:
        return str(self.args[0])


def route(
    scored: ScoredMessage, mapping: TriageMapping, min_confidence: float, source_partition: int = -1
) -> TriageTicket:
    """Queue, priority and SLA for one scored support message, read from ``source_partition`` of
    the scored topic. The SLA runs from its event time."""
    if scored.kind is not Kind.support:
        raise ValueError(f"route takes scored support messages; {scored.id} is {scored.kind.value}")
    try:
        r = mapping.route(scored.label)
    except KeyError:
        raise UnroutableIntent(
            f"intent {scored.label!r} of {scored.id} has no route in triage mapping {mapping.version}; "
            "the model and the mapping disagree: add the intent to the mapping or deploy the matching model"
        ) from None
    human = scored.confidence < min_confidence
    event_time = as_aware(scored.event_time)
    return TriageTicket(
        message_id=scored.id,
        text=scored.text,
        intent=scored.label,
        confidence=scored.confidence,
        queue=HUMAN_TRIAGE if human else r.queue,
        priority=r.priority,
        sla_minutes=r.sla_minutes,
        due_at=event_time + timedelta(minutes=r.sla_minutes),
        human_triage=human,
        routed_queue=r.queue,
        model_version=scored.model_version,
        event_time=event_time,
        source_partition=source_partition,
    )


def _message(d: TriageTicket) -> ContributingMessage:
    return ContributingMessage(id=d.message_id, text=d.text, label=d.intent, score=d.confidence)


def priority_alert(decision: TriageTicket, priorities: Iterable[str] = ("P1",)) -> Alert | None:
    """An immediate alert for an urgent intent. None for a low-confidence guess: that one is in
    human triage already, and its SLA is still tracked."""
    if decision.human_triage or decision.priority not in set(priorities):
        return None
    return Alert(
        id=Alert.make_id("triage", "priority_intent", decision.message_id),
        kind="triage",
        rule="priority_intent",
        severity=Severity.critical if decision.priority == "P1" else Severity.warning,
        intent=decision.intent,
        queue=decision.queue,
        window_start=decision.event_time,
        window_end=decision.due_at,
        figures={"confidence": decision.confidence, "sla_minutes": float(decision.sla_minutes)},
        model_version=decision.model_version,
        top_messages=[_message(decision)],
        created_at=decision.event_time,
    )


class SlaTracker:
    """Open urgent tickets until acknowledged; each one not acknowledged by its due time raises
    one escalation alert. ``now`` is whatever clock the caller runs SLAs on. A ticket belongs to
    the scored-topic partition it was routed from, so a worker that loses the partition lets go of
    its clocks (``release``) and the next owner reopens them (``open`` on the stored tickets)."""

    def __init__(self, priorities: Iterable[str] = ("P1",)) -> None:
        self.priorities = frozenset(priorities)
        self._open: dict[str, TriageTicket] = {}
        self._due: list[tuple[datetime, str]] = []  # heap; acked entries are skipped when popped

    def __len__(self) -> int:
        return len(self._open)

    def open(self, decision: TriageTicket) -> bool:
        """Track the ticket if its priority is escalated; False when it is not tracked."""
        if decision.priority not in self.priorities or decision.message_id in self._open:
            return False
        self._open[decision.message_id] = decision
        heapq.heappush(self._due, (decision.due_at, decision.message_id))
        return True

    def release(self, partitions: Iterable[int]) -> int:
        """Stop tracking the tickets routed from these partitions; returns how many."""
        gone = set(partitions)
        drop = [m for m, d in self._open.items() if d.source_partition in gone]
        for m in drop:
            del self._open[m]  # their heap entries are skipped when popped
        return len(drop)

    def ack(self, message_id: str) -> bool:
        """False when the ticket is not open (unknown, already acked, or already escalated)."""
        return self._open.pop(message_id, None) is not None

    def due(self, now: datetime) -> list[Alert]:
        """Escalations for open tickets whose due time has passed; each ticket escalates once."""
        now = as_aware(now)
        out = []
        while self._due and self._due[0][0] < now:
            due_at, message_id = heapq.heappop(self._due)
            d = self._open.get(message_id)
            if d is None or d.due_at != due_at:
                # Acked or released, or left by a ticket since reopened with another due time:
                # that one has an entry of its own, and must not go with this one.
                continue
            del self._open[message_id]
            out.append(
                Alert(
                    id=sla_breach_id(message_id),
                    kind="triage",
                    rule="sla_breach",
                    severity=Severity.critical,
                    intent=d.intent,
                    queue=d.queue,
                    window_start=d.event_time,
                    window_end=d.due_at,
                    figures={
                        "sla_minutes": float(d.sla_minutes),
                        "minutes_overdue": (now - d.due_at) / timedelta(minutes=1),
                        "confidence": d.confidence,
                    },
                    model_version=d.model_version,
                    top_messages=[_message(d)],
                    created_at=now,
                )
            )
        return out


class IntentSpikeDetector:
    """Per-intent event-time hopping windows of message counts. Each window is scored against the
    intent's river baseline of volume as it was before the window; the baseline learns only the
    windows that tile history, so each ticket is learned once, and no further from normal than the
    alert level. Alerts when the count jumps; each intent then keeps quiet for the cooldown unless
    it reaches a higher severity."""

    def __init__(self, rule: IntentSpikeRule) -> None:
        self._rule = rule
        self._windows = HoppingWindows(self._spec(rule))
        # Only the windows that tile history are learned, so an intent with no window is learned
        # as a 0 once per window size.
        self._size = self._spec(rule).size
        self._volume = KeyedBaselines(rule.baseline.volume_spec(), self._size, silent_value=0.0)
        # intent -> the end of the window that last fired and its severity
        self._last_fired: dict[str, tuple[datetime, Severity]] = {}

    @staticmethod
    def _spec(rule: IntentSpikeRule) -> WindowSpec:
        return rule.window.spec()

    @property
    def watermark(self) -> datetime | None:
        return self._windows.watermark

    def swap_rules(self, rule: IntentSpikeRule) -> None:
        if changed := geometry_changes(self._rule, rule):
            raise RulesError(
                f"the new rules change triage.intent_spike.{' and triage.intent_spike.'.join(changed)}; "
                "restart the triage worker with fresh state to apply them"
            )
        self._rule = rule

    def feed_event(self, decision: TriageTicket) -> Fed:
        added = self._windows.add(
            decision.intent, decision.event_time, label=decision.intent, score=decision.confidence,
            message_id=decision.message_id, text=decision.text, model_version=decision.model_version,
        )  # fmt: skip
        return Fed(self._evaluate(added.closed), not added.accepted, added.closed)

    def advance(self, to: datetime) -> list[Alert]:
        return self._evaluate(self._windows.advance(to))

    def to_state(self) -> dict:
        """Windows, volume baselines and cooldowns, stamped with the geometry they were built with."""
        return {
            "geometry": geometry(self._rule),
            "windows": self._windows.to_state(),
            "volume": self._volume.to_state(),
            "learned": "tumbling",
            "last_fired": {intent: [t.isoformat(), sev.value] for intent, (t, sev) in self._last_fired.items()},
        }

    @classmethod
    def from_state(cls, rule: IntentSpikeRule, state: dict) -> IntentSpikeDetector:
        check_geometry(state, rule, "intent-spike")
        detector = cls(rule)
        detector._windows = HoppingWindows.from_state(cls._spec(rule), state["windows"], kept="highest")
        volume = state["volume"]
        if state.get("learned") != "tumbling":  # written when every hopping window was learned
            volume = from_overlapping(volume, cls._spec(rule).panes_per_window, detector._size)
        detector._volume.restore(volume)
        detector._last_fired = {  # a bare time was written before cooldowns kept their severity
            intent: cooldown_from_state([saved] if isinstance(saved, str) else saved)
            for intent, saved in state["last_fired"].items()
        }
        return detector

    def _evaluate(self, closed: list[WindowFigures]) -> list[Alert]:
        r = self._rule
        cooldown = timedelta(minutes=r.cooldown_minutes)
        alerts = []
        for fig in closed:
            vol = self._volume.score(fig.key, float(fig.volume), fig.end)
            if tiles_history(fig.end, self._size):
                self._volume.learn(fig.key, winsorized(float(fig.volume), vol, r.levels.info), fig.end)
            if not r.enabled or vol.z is None or fig.volume < r.min_volume:
                continue
            ratio = fig.volume / max(vol.expected, 1.0)
            sev = r.levels.severity(vol.z) if ratio >= r.min_ratio else None
            if sev is None or cooling(self._last_fired.get(fig.key), sev, fig.end, cooldown):
                continue
            self._last_fired[fig.key] = (fig.end, sev)
            alerts.append(
                Alert(
                    id=Alert.make_id("triage", "intent_spike", fig.key, fig.end.isoformat()),
                    kind="triage",
                    rule="intent_spike",
                    severity=sev,
                    intent=fig.key,
                    window_start=fig.start,
                    window_end=fig.end,
                    figures={
                        "volume": float(fig.volume),
                        "baseline_volume": vol.expected,
                        "baseline_std": vol.std,
                        "z_volume": vol.z,
                        "volume_ratio": ratio,
                        "mean_confidence": fig.mean_score,
                    },
                    model_version=",".join(fig.model_versions),
                    top_messages=list(fig.top["highest"]),  # the most confident examples of the intent
                    created_at=self._windows.watermark or fig.end,
                )
            )
        return alerts


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


class CalibrationError(ValueError):
    """No confidence threshold reaches the target precision on the given predictions."""


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: float  # route automatically when confidence >= threshold
    precision: float  # accuracy of the predictions at or above it
    coverage: float  # share of predictions routed automatically
    support: int  # how many predictions are at or above it


def calibrate_threshold(
    pairs: Iterable[tuple[float, bool]], target_precision: float, *, min_support: int = 1
) -> Calibration:
    """The LOWEST confidence threshold whose predictions at or above it are correct at least
    ``target_precision`` of the time (with at least ``min_support`` of them), from validation
    ``(confidence, correct)`` pairs. Lowest, so as few messages as possible go to people."""
    if not 0 < target_precision <= 1:
        raise ValueError(f"target_precision {target_precision} must be in (0, 1]")
    ordered = sorted(((float(c), bool(ok)) for c, ok in pairs), key=lambda p: -p[0])
    if not ordered:
        raise CalibrationError("no validation predictions to calibrate on; score a held-out split first")
    # A NaN sorts anywhere and compares false with everything: it became the threshold, and no
    # confidence is below NaN, so nothing went to people.
    if bad := [c for c, _ in ordered if not 0 <= c <= 1]:
        raise CalibrationError(
            f"{len(bad)} of {len(ordered)} validation confidences are not probabilities in [0, 1] "
            f"(e.g. {bad[0]}); the model's outputs are broken"
        )
    best: Calibration | None = None
    correct = 0
    for i, (conf, ok) in enumerate(ordered):
        correct += ok
        if i + 1 < len(ordered) and ordered[i + 1][0] == conf:
            continue  # a threshold takes all predictions of equal confidence together
        support = i + 1
        precision = correct / support
        if precision >= target_precision and support >= min_support:
            best = Calibration(conf, precision, support / len(ordered), support)
    if best is None:
        top = ordered[0][0]
        raise CalibrationError(
            f"no threshold reaches precision {target_precision} with at least {min_support} predictions "
            f"(of {len(ordered)}, highest confidence {top:.3f}); lower the target or improve the model"
        )
    return best


def calibration_summary(
    pairs: Iterable[tuple[float, bool]], target_precision: float, *, min_support: int
) -> dict[str, float | int | str]:
    """What a model card records about its low-confidence threshold: the calibration, or why
    there is none (the worker then falls back to the rules' min_confidence)."""
    pairs = list(pairs)
    base: dict[str, float | int | str] = {"target_precision": target_precision, "n": len(pairs)}
    try:
        c = calibrate_threshold(pairs, target_precision, min_support=min_support)
    except CalibrationError as e:
        return {**base, "error": str(e)}
    return {**base, "threshold": c.threshold, "precision": c.precision, "coverage": c.coverage, "support": c.support}


def calibrated_threshold(card: ModelCard) -> float | None:
    """The confidence threshold calibrated at train time on the card's validation split, if any."""
    summary = (card.metrics.model_extra or {}).get("calibration") if card.metrics else None
    return float(summary["threshold"]) if isinstance(summary, dict) and "threshold" in summary else None
