"""What responders' verdicts teach: alert precision per rule, and labels for the messages behind
an alert (confirmed when the alert was useful, flagged for review when it was false)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from streams.alerting.contracts import Alert, AlertVerdict

# Rules whose verdict speaks for the labels of the messages behind the alert. A volume spike's
# verdict is about volume, an SLA breach's about response time: neither says the labels are right.
LABEL_RULES = frozenset({"negative_share", "sentiment_shock", "priority_intent"})


@dataclass(frozen=True, slots=True)
class RulePrecision:
    rule: str
    alerts: int
    useful: int
    false: int

    @property
    def rated(self) -> int:
        return self.useful + self.false

    @property
    def unrated(self) -> int:
        return self.alerts - self.rated

    @property
    def precision(self) -> float | None:
        """Useful over rated; None until some alert of the rule is rated."""
        return self.useful / self.rated if self.rated else None


def latest_verdicts(verdicts: Iterable[AlertVerdict]) -> dict[str, AlertVerdict]:
    """One verdict per alert: the latest by ``at`` (a responder may change their mind); on equal
    times the one given last."""
    latest: dict[str, AlertVerdict] = {}
    for v in verdicts:
        held = latest.get(v.alert_id)
        if held is None or v.at >= held.at:
            latest[v.alert_id] = v
    return latest


def rule_precision(alerts: Iterable[Alert], verdicts: Iterable[AlertVerdict]) -> dict[str, RulePrecision]:
    """Per rule: alerts fired, and how many of them were judged useful or false. Verdicts on
    alerts not in ``alerts`` are ignored (give the alerts of the period being reported)."""
    latest = latest_verdicts(verdicts)
    tally: dict[str, list[int]] = {}
    for a in alerts:
        counts = tally.setdefault(a.rule, [0, 0, 0])
        counts[0] += 1
        if (v := latest.get(a.id)) is not None:
            counts[1 if v.useful else 2] += 1
    return {rule: RulePrecision(rule, *counts) for rule, counts in sorted(tally.items())}


class LabelSuggestion(BaseModel):
    """A label for one message, from a verdict on an alert it contributed to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: str
    text: str
    label: str
    action: Literal["confirm", "review"]
    alert_id: str
    rule: str
    by: str
    at: AwareDatetime


def label_suggestions(alert: Alert, verdict: AlertVerdict) -> list[LabelSuggestion]:
    """A useful alert confirms the labels of its contributing messages; a false one flags them for
    review. Empty for rules whose verdict says nothing about labels (see LABEL_RULES)."""
    if verdict.alert_id != alert.id:
        raise ValueError(f"verdict is on alert {verdict.alert_id}, not {alert.id}")
    if alert.rule not in LABEL_RULES:
        return []
    action: Literal["confirm", "review"] = "confirm" if verdict.useful else "review"
    return [
        LabelSuggestion(
            message_id=m.id, text=m.text, label=m.label, action=action,
            alert_id=alert.id, rule=alert.rule, by=verdict.by, at=verdict.at,
        )  # fmt: skip
        for m in alert.top_messages
    ]


def standing_confirmations(alerts: Iterable[Alert], verdicts: Iterable[AlertVerdict],
                           who: str) -> dict[str, tuple[Alert, LabelSuggestion]]:
    """The labels ``who``'s verdicts still confirm, by message: each message behind an alert whose
    latest verdict by ``who`` is useful, with that alert (the newest, when several). ``alerts`` and
    ``verdicts`` come oldest first. A message can be behind several alerts, so one verdict turning
    false must not take back what a useful one on another alert confirmed."""
    latest = {v.alert_id: v for v in verdicts if v.by == who}
    return {
        s.message_id: (a, s)
        for a in alerts if (v := latest.get(a.id)) is not None and v.useful
        for s in label_suggestions(a, v)
    }
