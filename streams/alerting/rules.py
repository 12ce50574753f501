"""Alert rules (a validated, immutable config read from JSON or YAML) and the sentiment alerter.

``SentimentAlerter`` feeds scored news into per-ticker hopping windows; as each window closes it
scores the window against the ticker's baseline (learned before this window), applies the rules,
holds each (ticker, rule) quiet for a cooldown, and learns the window if it is one of those that
tile history (so each message is learned once), no further from normal than the alert level. It
never reads the clock: the time of everything, alerts included, is event time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streams.alerting.baselines import Baseline, BaselineSpec, KeyedBaselines, from_overlapping, tiles_history, winsorized
from streams.alerting.contracts import Alert, Severity, TickerEvent, as_aware
from streams.alerting.windows import HoppingWindows, Side, WindowFigures, WindowSpec, WindowSpecError
from streams.contracts import Kind, ScoredMessage
from streams.tickers import normalise


class RulesError(ValueError):
    """The rules file cannot be used; the message names the file and each bad field."""


# The longest window, step, lateness or cooldown: longer ones are typos, and the windows' integer
# arithmetic overflows on the years an unbounded value reaches.
MAX_MINUTES = 7 * 24 * 60


class _Strict(BaseModel):
    # NaN would switch a rule off silently (no comparison with it is true), and infinity crashed
    # the stream at its first window once a reload had accepted it.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Levels(_Strict):
    """A rule fires at ``info``; ``warning`` and ``critical`` raise the severity."""

    info: float
    warning: float | None = None
    critical: float | None = None

    @model_validator(mode="after")
    def _ascending(self) -> Levels:
        steps = [v for v in (self.info, self.warning, self.critical) if v is not None]
        if steps != sorted(steps) or len(set(steps)) != len(steps):
            raise ValueError(f"levels must rise strictly from info to warning to critical, got {steps}")
        return self

    def severity(self, value: float) -> Severity | None:
        if self.critical is not None and value >= self.critical:
            return Severity.critical
        if self.warning is not None and value >= self.warning:
            return Severity.warning
        if value >= self.info:
            return Severity.info
        return None


class WindowConfig(_Strict):
    size_minutes: float = Field(15, gt=0, le=MAX_MINUTES)
    step_minutes: float = Field(1, gt=0, le=MAX_MINUTES)
    lateness_minutes: float = Field(2, ge=0, le=MAX_MINUTES)
    top_k: int = Field(5, ge=0, le=100)

    @model_validator(mode="after")
    def _whole_steps(self) -> WindowConfig:
        ratio = self.size_minutes / self.step_minutes
        if abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(f"size_minutes ({self.size_minutes}) must be a whole multiple of step_minutes ({self.step_minutes})")
        try:
            self.spec()  # what the windows will be built from, checked now rather than at the first event
        except WindowSpecError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def idle_after_s(self) -> float:
        """Wall-clock silence after which a stream's event time moves on with the wall clock: by
        then every window its last event could still reach may close."""
        return (self.lateness_minutes + self.step_minutes) * 60

    def spec(self) -> WindowSpec:
        return WindowSpec(
            size=timedelta(minutes=self.size_minutes),
            step=timedelta(minutes=self.step_minutes),
            lateness=timedelta(minutes=self.lateness_minutes),
            top_k=self.top_k,
        )


class BaselineConfig(_Strict):
    fading_factor: float = Field(0.02, gt=0, le=1, description="Weight of each newly learned window.")
    warmup_windows: int = Field(30, ge=1, description="Windows learned before z-scores count.")
    min_std_sentiment: float = Field(0.1, gt=0)
    min_std_volume: float = Field(1.0, gt=0)

    def sentiment_spec(self) -> BaselineSpec:
        return BaselineSpec(self.fading_factor, self.warmup_windows, self.min_std_sentiment)

    def volume_spec(self) -> BaselineSpec:
        return BaselineSpec(self.fading_factor, self.warmup_windows, self.min_std_volume)


class NegativeShareRule(_Strict):
    enabled: bool = True
    min_volume: int = Field(15, ge=1)
    levels: Levels = Levels(info=0.7, warning=0.8, critical=0.9)
    min_rise: float = Field(
        0.2, ge=0, le=1, description="Once the ticker's baseline is warm, the share must also be this much above "
        "its usual negative share: a normally negative ticker does not alert all day.",
    )

    @model_validator(mode="after")
    def _shares(self) -> NegativeShareRule:
        if not 0 < self.levels.info <= 1 or any(v is not None and v > 1 for v in (self.levels.warning, self.levels.critical)):
            raise ValueError("negative-share levels are shares: each must be in (0, 1]")
        return self


class SentimentShockRule(_Strict):
    enabled: bool = True
    min_volume: int = Field(5, ge=1)
    direction: Literal["negative", "positive", "both"] = "negative"
    levels: Levels = Levels(info=3.0, warning=4.0, critical=6.0)


class VolumeSpikeRule(_Strict):
    enabled: bool = True
    min_volume: int = Field(15, ge=1)
    min_ratio: float = Field(3.0, ge=1, description="Volume over the baseline volume (at least 1).")
    levels: Levels = Levels(info=4.0, warning=6.0, critical=10.0)


class SentimentRules(_Strict):
    window: WindowConfig = WindowConfig()
    baseline: BaselineConfig = BaselineConfig()
    negative_share: NegativeShareRule = NegativeShareRule()
    sentiment_shock: SentimentShockRule = SentimentShockRule()
    volume_spike: VolumeSpikeRule = VolumeSpikeRule()
    cooldown_minutes: float = Field(
        60, ge=0, le=MAX_MINUTES, description="Quiet time per (ticker, rule) after an alert."
    )
    forget_after_days: float = Field(
        30, gt=0, le=3650, description="A ticker with no window for this long (event time) loses its baselines and "
        "warms up again when it comes back, so the state holds only tickers seen within it.",
    )
    negative_label: str = "negative"
    positive_label: str = "positive"


# The intent-spike windows and baseline have defaults of their own, as classes rather than
# instances: a file that set one field (a lateness, a warm-up) got the sentiment defaults for the
# rest, a 1-minute step and a slower fading factor.
class IntentSpikeWindow(WindowConfig):
    size_minutes: float = Field(15.0, gt=0, le=MAX_MINUTES)
    step_minutes: float = Field(5.0, gt=0, le=MAX_MINUTES)
    lateness_minutes: float = Field(2.0, ge=0, le=MAX_MINUTES)


class IntentSpikeBaseline(BaselineConfig):
    fading_factor: float = Field(0.05, gt=0, le=1, description="Weight of each newly learned window.")
    warmup_windows: int = Field(12, ge=1, description="Windows learned before z-scores count.")


class IntentSpikeRule(_Strict):
    enabled: bool = True
    window: IntentSpikeWindow = IntentSpikeWindow()
    baseline: IntentSpikeBaseline = IntentSpikeBaseline()
    min_volume: int = Field(10, ge=1)
    min_ratio: float = Field(3.0, ge=1)
    levels: Levels = Levels(info=4.0, warning=6.0, critical=10.0)
    cooldown_minutes: float = Field(60, ge=0, le=MAX_MINUTES)


class TriageRules(_Strict):
    min_confidence: float = Field(0.5, ge=0, le=1, description="Below it a message goes to human triage.")
    alert_priorities: tuple[Literal["P1", "P2", "P3", "P4"], ...] = ("P1",)
    escalate_priorities: tuple[Literal["P1", "P2", "P3", "P4"], ...] = ("P1",)
    intent_spike: IntentSpikeRule = IntentSpikeRule()


class AlertRules(_Strict):
    version: str = Field("1", min_length=1)
    sentiment: SentimentRules = SentimentRules()
    triage: TriageRules = TriageRules()

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<rules>") -> AlertRules:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()
            )
            raise RulesError(f"alert rules {source} are invalid: {problems}") from None

    @classmethod
    def from_file(cls, path: Path) -> AlertRules:
        """Read ``.json``, ``.yaml`` or ``.yml``; every field is optional (defaults above)."""
        path = Path(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as e:
            raise RulesError(f"cannot read the alert rules {path}: {e}") from None
        suffix = path.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise RulesError(f"alert rules {path}: expected a .json, .yaml or .yml file")
        import yaml  # pyyaml is installed with transformers

        try:
            data = json.loads(raw) if suffix == ".json" else yaml.safe_load(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise RulesError(f"alert rules {path} are not valid {suffix[1:].upper()}: {e}") from None
        return cls.from_mapping(data if data is not None else {}, str(path))


@dataclass(frozen=True, slots=True)
class RulesFile:
    """Where the rules live. ``reload()`` returns a new immutable ``AlertRules`` (or raises
    RulesError, leaving whatever the caller holds in force), so swapping is one assignment."""

    path: Path

    def reload(self) -> AlertRules:
        return AlertRules.from_file(self.path)


def geometry_changes(old: SentimentRules | IntentSpikeRule, new: SentimentRules | IntentSpikeRule) -> list[str]:
    return [name for name in ("window", "baseline") if getattr(old, name) != getattr(new, name)]


def geometry(rules: SentimentRules | IntentSpikeRule) -> dict:
    """The settings live windows and baselines are built with, as saved beside their state."""
    return {"window": rules.window.model_dump(), "baseline": rules.baseline.model_dump()}


def check_geometry(state: dict, rules: SentimentRules | IntentSpikeRule, what: str) -> None:
    """Refuse saved ``what`` state built with other window or baseline settings than ``rules``."""
    if state["geometry"] != geometry(rules):
        raise RulesError(
            f"the saved {what} state was built with other window or baseline settings "
            f"({state['geometry']}); it cannot continue under the current ones"
        )


# --------------------------------------------------------------------------------------------
# The sentiment alerter
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fed:
    alerts: list[Alert]
    too_late: bool = False  # the caller records the message and drops it
    windows: list[WindowFigures] = field(default_factory=list)  # closed by this message


def ticker_events(msg: ScoredMessage, rules: SentimentRules) -> list[TickerEvent]:
    """The message as each of its tickers sees it (none: it has no ticker)."""
    if msg.kind is not Kind.news:
        raise ValueError(f"sentiment alerting takes scored news; {msg.id} is {msg.kind.value}: route it to triage")
    score = msg.probs.get(rules.positive_label, 0.0) - msg.probs.get(rules.negative_label, 0.0)
    return [
        TickerEvent(ticker=t, message_id=msg.id, event_time=as_aware(msg.event_time), label=msg.label,
                    score=score, text=msg.text, model_version=msg.model_version)
        for t in _distinct_tickers(msg.tickers or ())
    ]  # fmt: skip


def _distinct_tickers(tickers: list[str]) -> list[str]:
    # A scored message's tickers are taken as given, from whatever produced it (a backtest reads
    # them from storage): "VGLX" twice would count the message twice and "vglx" would get windows of
    # its own. One event per normalised ticker; a value that cannot be a ticker gets none.
    return list(dict.fromkeys(t for t in map(normalise, tickers) if t is not None))


class SentimentAlerter:
    """Feed scored news (roughly in event-time order); get the alerts fired, deterministically."""

    def __init__(self, rules: SentimentRules) -> None:
        self._rules = rules
        self._windows = HoppingWindows(rules.window.spec())
        # Baselines learn only the windows that tile history (see tiles_history), so a silent
        # key's volume is learned as a 0 for each window size it had no window.
        self._size = rules.window.spec().size
        self._sentiment = KeyedBaselines(rules.baseline.sentiment_spec())
        self._volume = KeyedBaselines(rules.baseline.volume_spec(), self._size, silent_value=0.0)
        self._negative = KeyedBaselines(rules.baseline.sentiment_spec())
        # (ticker, rule) -> the end of the window that last fired and its severity
        self._last_fired: dict[tuple[str, str], tuple[datetime, Severity]] = {}
        self._next_forget: datetime | None = None

    @property
    def rules(self) -> SentimentRules:
        return self._rules

    @property
    def watermark(self) -> datetime | None:
        return self._windows.watermark

    def baselines(self, ticker: str) -> tuple[Baseline | None, Baseline | None]:
        """The ticker's (sentiment, volume) baselines, for metrics and inspection."""
        return self._sentiment.get(ticker), self._volume.get(ticker)

    def swap_rules(self, rules: SentimentRules) -> None:
        """Take new thresholds, cooldown and labels at once. Window or baseline geometry cannot
        change under live state."""
        if changed := geometry_changes(self._rules, rules):
            raise RulesError(
                f"the new rules change sentiment.{' and sentiment.'.join(changed)}, which live windows and "
                "baselines were built with; restart the alerting worker with fresh state to apply them"
            )
        self._rules = rules

    def feed(self, msg: ScoredMessage) -> Fed:
        """Feed every ticker's view of one message; a message with no ticker still moves event time."""
        closed: list[WindowFigures] = []
        too_late = False
        for event in ticker_events(msg, self._rules):
            fed = self._add(event)
            too_late = too_late or fed.too_late
            closed += fed.windows
        if not too_late:
            closed += self._windows.advance(msg.event_time)
        return Fed(self._evaluate(closed), too_late, closed)

    def feed_event(self, event: TickerEvent) -> Fed:
        fed = self._add(event)
        return Fed(self._evaluate(fed.windows), fed.too_late, fed.windows)

    def _add(self, e: TickerEvent) -> Fed:
        added = self._windows.add(
            e.ticker, e.event_time, label=e.label, score=e.score,
            message_id=e.message_id, text=e.text, model_version=e.model_version,
        )  # fmt: skip
        return Fed([], not added.accepted, added.closed)

    def advance(self, to: datetime) -> list[Alert]:
        """Move event time to ``to`` without a message (a quiet stream's timer)."""
        return self._evaluate(self._windows.advance(to))

    def _evaluate(self, closed: list[WindowFigures]) -> list[Alert]:
        alerts: list[Alert] = []
        for fig in closed:
            alerts += self._judge(fig)
        if closed:
            self._forget_silent_tickers(max(fig.end for fig in closed))
        return alerts

    def _forget_silent_tickers(self, last_closed: datetime) -> None:
        # Windows close in order of their end, so a ticker silent for forget_after before the last
        # one closed would start afresh at its next window anyway: dropping it now changes no
        # result, whenever it runs (a restored alerter runs it at other times). Once an hour.
        if self._next_forget is not None and last_closed < self._next_forget:
            return
        self._next_forget = last_closed + timedelta(hours=1)
        forget_after = timedelta(days=self._rules.forget_after_days)
        for baselines in (self._sentiment, self._volume, self._negative):
            baselines.forget_silent(last_closed, forget_after)

    def _judge(self, fig: WindowFigures) -> list[Alert]:
        r = self._rules
        neg_share = fig.share(r.negative_label)
        forget_after = timedelta(days=r.forget_after_days)
        sent = self._sentiment.score(fig.key, fig.mean_score, fig.end, forget_after)
        vol = self._volume.score(fig.key, float(fig.volume), fig.end, forget_after)
        usual_neg = self._negative.score(fig.key, neg_share, fig.end, forget_after)
        if tiles_history(fig.end, self._size):
            self._sentiment.learn(fig.key, winsorized(fig.mean_score, sent, r.sentiment_shock.levels.info), fig.end)
            self._volume.learn(fig.key, winsorized(float(fig.volume), vol, r.volume_spike.levels.info), fig.end)
            self._negative.learn(fig.key, neg_share, fig.end)
        ratio = fig.volume / max(vol.expected, 1.0)
        figures = {
            "volume": float(fig.volume),
            "mean_score": fig.mean_score,
            "negative_share": neg_share,
            "positive_share": fig.share(r.positive_label),
            "baseline_sentiment": sent.expected,
            "baseline_sentiment_std": sent.std,
            "baseline_volume": vol.expected,
            "baseline_windows": float(sent.n),
            "volume_ratio": ratio,
        }
        z_sent, z_vol = sent.z, vol.z
        # warm: the ticker has a usual negative share, and only a rise above it is news
        neg_warm = usual_neg.z is not None
        if neg_warm:
            figures["usual_negative_share"] = usual_neg.expected
        if z_sent is not None:
            figures["z_sentiment"] = z_sent
        if z_vol is not None:
            figures["z_volume"] = z_vol
        for label, count in fig.counts.items():
            figures[f"count_{label}"] = float(count)

        # Each alert lists the messages behind it: the most negative for a negative share, and for a
        # shock or a volume spike those on the side the window's sentiment moved to from normal
        # (below it: the most negative; else the most positive), a spike's being what it is about.
        moved: Side = "lowest" if fig.mean_score < sent.expected else "highest"
        fired: list[tuple[str, Severity, Side]] = []
        rose = not neg_warm or neg_share - usual_neg.expected >= r.negative_share.min_rise
        if r.negative_share.enabled and fig.volume >= r.negative_share.min_volume and rose:
            if sev := r.negative_share.levels.severity(neg_share):
                fired.append(("negative_share", sev, "lowest"))
        shock = r.sentiment_shock
        if shock.enabled and z_sent is not None and fig.volume >= shock.min_volume:
            signed = {"negative": -z_sent, "positive": z_sent, "both": abs(z_sent)}[shock.direction]
            if sev := shock.levels.severity(signed):
                fired.append(("sentiment_shock", sev, moved))
        spike = r.volume_spike
        if spike.enabled and z_vol is not None and fig.volume >= spike.min_volume and ratio >= spike.min_ratio:
            if sev := spike.levels.severity(z_vol):
                fired.append(("volume_spike", sev, moved))

        created = self._windows.watermark or fig.end
        cooldown = timedelta(minutes=r.cooldown_minutes)
        alerts = []
        for rule, sev, side in fired:
            if cooling(self._last_fired.get((fig.key, rule)), sev, fig.end, cooldown):
                continue
            self._last_fired[(fig.key, rule)] = (fig.end, sev)
            alerts.append(
                Alert(
                    id=Alert.make_id("sentiment", rule, fig.key, fig.end.isoformat()),
                    kind="sentiment",
                    rule=rule,
                    severity=sev,
                    ticker=fig.key,
                    window_start=fig.start,
                    window_end=fig.end,
                    figures=figures,
                    model_version=",".join(fig.model_versions),
                    top_messages=list(fig.top[side]),
                    created_at=created,
                )
            )
        self._forget_cooldowns(fig.end - cooldown)
        return alerts

    def to_state(self) -> dict:
        """Windows, baselines and cooldowns as JSON-able data, stamped with the geometry they were
        built with (``from_state`` refuses another)."""
        return {
            "geometry": geometry(self._rules),
            "windows": self._windows.to_state(),
            "sentiment": self._sentiment.to_state(),
            "volume": self._volume.to_state(),
            "negative_share": self._negative.to_state(),
            "learned": "tumbling",
            "last_fired": [[key, rule, t.isoformat(), sev.value] for (key, rule), (t, sev) in self._last_fired.items()],
        }

    @classmethod
    def from_state(cls, rules: SentimentRules, state: dict) -> SentimentAlerter:
        check_geometry(state, rules, "sentiment")
        alerter = cls(rules)
        alerter._windows = HoppingWindows.from_state(rules.window.spec(), state["windows"], kept="lowest")
        sentiment, volume = state["sentiment"], state["volume"]
        if state.get("learned") != "tumbling":  # written when every hopping window was learned
            overlap = rules.window.spec().panes_per_window
            sentiment = from_overlapping(sentiment, overlap, alerter._size)
            volume = from_overlapping(volume, overlap, alerter._size)
        alerter._sentiment.restore(sentiment)
        alerter._volume.restore(volume)
        if "negative_share" in state:  # checkpoints before it start it empty: warm-up again
            alerter._negative.restore(state["negative_share"])
        alerter._last_fired = {(key, rule): cooldown_from_state(rest) for key, rule, *rest in state["last_fired"]}
        return alerter

    def _forget_cooldowns(self, before: datetime) -> None:
        # Bounded memory: a cooldown that has run out is the same as none.
        if len(self._last_fired) > 1024:
            self._last_fired = {k: last for k, last in self._last_fired.items() if last[0] > before}


def cooling(last: tuple[datetime, Severity] | None, sev: Severity, end: datetime, cooldown: timedelta) -> bool:
    """Whether the cooldown that ``last`` (the end of the window that fired, and its severity)
    started holds back an alert of ``sev`` on the window ending at ``end``. A higher severity goes
    through: an info alert must not hide the same ticker or intent going critical."""
    return last is not None and end < last[0] + cooldown and sev.rank <= last[1].rank


def cooldown_from_state(saved: list[str]) -> tuple[datetime, Severity]:
    """A cooldown as ``[window end, severity]``. Checkpoints written before cooldowns kept their
    severity hold a bare time: read as critical, it lets nothing through until it ends, as the
    code that wrote it would have."""
    t, *sev = saved
    return datetime.fromisoformat(t), Severity(sev[0]) if sev else Severity.critical
