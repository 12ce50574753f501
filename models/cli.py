"""`vigil train`, `vigil eval` and `vigil models ...`; mount with ``register(app)``.

Every command reads the settings object the top-level callback put in ``ctx.obj``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streams.cli_errors import fail, known_task
from streams.settings import VigilSettings

console = Console()
models_app = typer.Typer(help="The model registry: list, show, promote, roll back, backtest.", no_args_is_help=True)


def _settings(ctx: typer.Context) -> VigilSettings:
    return ctx.obj if isinstance(ctx.obj, VigilSettings) else VigilSettings()


def _fail(e: Exception) -> typer.Exit:
    return fail(console, e)


TaskArg = Annotated[str, typer.Argument(callback=known_task, help="sentiment or triage")]


def train_command(
    ctx: typer.Context,
    task: Annotated[str, typer.Option(callback=known_task, help="sentiment or triage")],
    profile: Annotated[str, typer.Option(help="quick (CPU demo, minutes) or full (GPU quality recipe)")] = "quick",
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    max_steps: Annotated[int | None, typer.Option(min=1)] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    max_length: Annotated[int | None, typer.Option(min=8, max=512)] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto (bf16 where the GPU or CPU computes it, else fp32), bf16 or fp32")] = None,
    train_cap: Annotated[int | None, typer.Option(
        min=1, help="Train on a seeded sample of at most N rows (the quick profile's: 3,000 sentiment, 3,600 triage)")] = None,
    encoder_layers: Annotated[int | None, typer.Option(
        min=1, help="Keep the base encoder's bottom N layers: faster scoring, some accuracy lost (default: all)")] = None,
    promote: Annotated[bool, typer.Option(help=(
        "Make the new version the champion, as `vigil models promote` does: refused when it cannot score a "
        "plain text, recorded as a model event."))] = False,
) -> None:
    """Fine-tune a model for TASK and add it to the registry as the next version."""
    from models.train import train_task

    settings = _settings(ctx)
    try:
        result = train_task(settings, task, profile, console=console, epochs=epochs, seed=seed,
                            max_steps=max_steps, lr=lr, batch_size=batch_size, max_length=max_length,
                            autocast=precision, train_cap=train_cap, encoder_layers=encoder_layers)
    except (ValueError, RuntimeError) as e:
        raise _fail(e) from e
    card = result.card
    console.print(f"[green]{task} {card.version}[/] in {result.seconds:.0f}s, {result.steps} steps: "
                  f"validation accuracy {result.report.accuracy:.4f}, macro-F1 {result.report.macro_f1:.4f} "
                  f"({card.metrics.n} held-out rows)")
    if promote:
        _promote(settings, task, card.version, "promoted by `vigil train --promote`")


def eval_command(
    ctx: typer.Context,
    task: Annotated[str, typer.Option(callback=known_task, help="sentiment or triage")],
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help=(
        "CSV: text,label or text,category (sentiment labels by name or as Twitter Financial News' 0 bearish, "
        "1 bullish, 2 neutral); with an all_agree column (Financial PhraseBank), that subset is reported too"))],
    version: Annotated[str | None, typer.Option(help="Registry version (default: settings / champion)")] = None,
    png: Annotated[Path | None, typer.Option(help="Write the confusion matrix here")] = None,
) -> None:
    """Accuracy, macro-F1 and a per-class report of a registry model on a labelled CSV."""
    from models.engine import load_scorer
    from models.evaluate import evaluate, predict_labels, write_confusion_png
    from models.tasks import read_labelled_csv

    s = _settings(ctx)
    try:
        scorer = load_scorer(s, task, version)
        rows = read_labelled_csv(data, task)
        predicted, truncated = predict_labels(scorer, rows.texts)
        report = evaluate(rows.labels, predicted, scorer.labels)
        agreed = None
        if rows.all_agree is not None and any(rows.all_agree):
            kept = [i for i, agree in enumerate(rows.all_agree) if agree]
            agreed = evaluate([rows.labels[i] for i in kept], [predicted[i] for i in kept], scorer.labels)
    except (ValueError, RuntimeError) as e:
        raise _fail(e) from e
    table = Table(title=f"{task} {scorer.model_version} on {data} ({report.n} rows)")
    for col in ("label", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for c in report.per_class:
        table.add_row(c.label, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support))
    console.print(table)
    console.print(f"accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}  "
                  f"truncated {truncated}")
    if agreed is not None:
        console.print(f"all-annotators-agree rows ({agreed.n}): accuracy {agreed.accuracy:.4f}  "
                      f"macro-F1 {agreed.macro_f1:.4f}")
    if png:
        try:
            write_confusion_png(report, png, f"{task} {scorer.model_version}")
        except OSError as e:
            raise _fail(e) from e
        console.print(f"confusion matrix: {png}")


@models_app.command("list")
def list_command(ctx: typer.Context) -> None:
    """Every version of every task, with its validation metrics."""
    from models.registry import ModelRegistry, RegistryError

    try:
        entries = ModelRegistry(_settings(ctx).registry_dir).list()
    except RegistryError as e:  # a damaged champion pointer: its message says how to repair it
        raise _fail(e) from e
    if not entries:
        console.print("no models yet: run `vigil train --task sentiment` and `vigil train --task triage`")
        return
    table = Table()
    for col in ("task", "version", "champion", "accuracy", "macro-F1", "created", "parent"):
        table.add_column(col)
    for card, champ in entries:
        m = card.metrics
        table.add_row(card.task, card.version, "*" if champ else "", f"{m.accuracy:.4f}" if m else "-",
                      f"{m.macro_f1:.4f}" if m else "-", card.created_at.strftime("%Y-%m-%d %H:%M"),
                      card.parent_version or "")
    console.print(table)


@models_app.command("show")
def show_command(ctx: typer.Context, task: TaskArg, version: Annotated[str, typer.Argument()] = "champion") -> None:
    """The model card of TASK VERSION (default: the champion)."""
    from models.registry import ModelRegistry, RegistryError

    try:
        console.print_json(json.dumps(ModelRegistry(_settings(ctx).registry_dir).show(task, version)))
    except RegistryError as e:
        raise _fail(e) from e


@models_app.command("promote")
def promote_command(ctx: typer.Context, task: TaskArg, version: str) -> None:
    """Make TASK VERSION the champion that scorers load."""
    _promote(_settings(ctx), task, version, "promoted by hand")


def _promote(settings: VigilSettings, task: str, version: str, how: str) -> None:
    """Make ``version`` of ``task`` the champion unless it cannot score a plain text, and record a
    ``promoted`` model event (best effort: `vigil status` lists it); ``how`` says who promoted it."""
    from models.registry import DamagedPointer, ModelRegistry, RegistryError

    from feedback.retrain_cli import record_champion_change
    from feedback.contracts import ModelEventKind

    registry = ModelRegistry(settings.registry_dir)
    try:
        try:
            before = registry.champion(task)
        except DamagedPointer:
            before = None  # promote writes the pointer anew: the repair the damage's message names
        # 'champion' names the current one: compared as itself, it would be tested and recorded anew
        version = registry.resolve(task, version).name
        if before == version:
            console.print(f"{task} champion: {version} already; nothing changed")
            return
        _refuse_if_broken(settings, task, version, before)
        registry.promote(task, version)
    except RegistryError as e:
        raise _fail(e) from e
    record_champion_change(settings, ModelEventKind.promoted, task, version, f"{how} (was {before})")
    console.print(f"{task} champion: {version}, was {before or 'none'} (running workers swap to it within "
                  "model_poll_interval_s)")


def _refuse_if_broken(settings: VigilSettings, task: str, version: str, champion: str | None) -> None:
    """A version that cannot score a plain text must not become the champion. Checked on the CPU in
    fp32, which shows broken weights; each worker checks again on its own device before it swaps."""
    from functools import partial

    from models.engine import load_scorer
    from models.registry import RegistryError
    from models.self_test import load_tested, refusal_reason

    cpu = settings.model_copy(update={"device": "cpu", "inference_precision": "fp32"})
    try:
        load_tested(partial(load_scorer, cpu, task), version)
    except RegistryError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever keeps it from scoring keeps it from serving
        raise _fail(RuntimeError(f"{task} {version} was not promoted: {refusal_reason(e)}. The champion is "
                                 f"still {champion or 'none'}.")) from e


@models_app.command("rollback")
def rollback_command(ctx: typer.Context, task: TaskArg) -> None:
    """Make the previous champion of TASK the champion again."""
    from models.registry import ModelRegistry, RegistryError

    from feedback.retrain_cli import record_champion_change
    from feedback.contracts import ModelEventKind

    settings = _settings(ctx)
    registry = ModelRegistry(settings.registry_dir)
    try:
        before = registry.champion(task)
        version = registry.rollback(task)
    except RegistryError as e:
        raise _fail(e) from e
    record_champion_change(settings, ModelEventKind.rolled_back, task, version, f"rolled back by hand from {before}")
    console.print(f"{task} champion rolled back to {version}")


@models_app.command("backtest")
def backtest_command(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The sentiment challenger, e.g. v3")],
    hours: Annotated[float, typer.Option(help="Replay this many hours of stored news, up to --until")] = 24.0,
    until: Annotated[datetime | None, typer.Option(help="End of the range (UTC; default: now)")] = None,
) -> None:
    """Forecast a sentiment challenger's alert volume: replay stored news through it and the alert rules,
    after warming the alerters up on the news stored before the range."""
    from feedback.backtest import BacktestError, backtest, warmup_span
    from models.engine import load_scorer
    from models.registry import ModelNotFound
    from streams.alerting.rules import AlertRules, RulesError
    from streams.clickhouse import ClickHouseError, open_store
    from streams.clickhouse.errors import RangeTooLarge

    s = _settings(ctx)
    end = until.replace(tzinfo=UTC) if until and until.tzinfo is None else (until or datetime.now(UTC))
    start = end - timedelta(hours=hours)
    try:
        rules = AlertRules.from_file(s.alert_rules_path) if s.alert_rules_path else AlertRules()
        scorer = load_scorer(s, "sentiment", version)
        with open_store(s) as store:
            news = store.fetch_scored_between("news", start, end, limit=s.backtest_max_messages)
            step = rules.sentiment.window.spec().size
            # One window's news at a time: the warm-up history is replayed, never held.
            history = (
                m
                for at in _steps(start - warmup_span(rules.sentiment), start, step)
                for m in store.fetch_scored_between("news", at, min(at + step, start), limit=s.backtest_max_messages)
            )
            report = backtest(news, scorer.score, rules.sentiment, scorer.model_version, start=start, end=end,
                              history=history)
    except RangeTooLarge as e:  # before ClickHouseError, which it is
        raise _fail(RangeTooLarge(f"{e}: backtest fewer --hours (or several windows, with --until), or raise "
                                  "VIGIL_BACKTEST_MAX_MESSAGES")) from e
    except (ModelNotFound, RulesError, BacktestError, ClickHouseError) as e:
        raise _fail(e) from e
    versions = ", ".join(sorted({m.model_version for m in news}))
    table = Table(title="alerts per rule")
    for col in ("rule", "champion", "challenger"):
        table.add_column(col, justify="left" if col == "rule" else "right")
    for rule in sorted(set(report.champion_alerts) | set(report.challenger_alerts)):
        table.add_row(rule, str(report.champion_alerts[rule]), str(report.challenger_alerts[rule]))
    console.print(table)
    change = report.volume_change()
    typer.echo(f"{report.messages} stored news scored by {versions}, replayed through {scorer.model_version}")
    had, needed = report.warmup.total_seconds() / 3600, report.warmup_needed.total_seconds() / 3600
    typer.echo(f"warm-up: {had:.1f} h of stored news before the range (the alert baselines need {needed:.1f} h)")
    if not report.warm:
        typer.echo(f"warning: the alerters had {had:.1f} h of history where their baselines need {needed:.1f} h: "
                   "alerts in the range's first hours are not those a warmed-up alerter raises")
    typer.echo(f"label flips {report.label_flips} ({100 * report.flip_rate:.1f}%)  alert volume change "
               f"{'n/a (champion raised none)' if change is None else f'{100 * change:+.0f}%'}")
    for title, keys in (("only the champion", report.only_champion), ("only the challenger", report.only_challenger)):
        if keys:
            typer.echo(f"alerts raised by {title}: " + "; ".join(keys[:20]))


def _steps(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    """The starts of ``step``-long pieces of [start, end)."""
    while start < end:
        yield start
        start += step


bench_app = typer.Typer(help="Benchmarks that print measured figures.", no_args_is_help=True)


@bench_app.command("scoring")
def bench_scoring_command(
    ctx: typer.Context,
    task: Annotated[str, typer.Option(callback=known_task, help="sentiment or triage")] = "sentiment",
    n: Annotated[int, typer.Option(help="Texts per contender")] = 2048,
    n_single: Annotated[int, typer.Option(help="Texts for the one-call-per-message baseline")] = 256,
    batch: Annotated[int, typer.Option(help="Batch size of the engine and the batched pipeline")] = 256,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda (default: settings)")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto|fp32|onnx|onnx-int8|int8|fp16|bf16 (default: settings)")] = None,
    also: Annotated[list[str] | None, typer.Option(
        help="Another engine precision to run in the same run (repeatable), e.g. --also fp32")] = None,
    train_if_missing: Annotated[bool, typer.Option(help="Train a quick model when none exists")] = False,
) -> None:
    """This engine vs HF pipeline per message and HF pipeline batched: msgs/s, p50/p99 batch latency."""
    from models.benchmark import bench_scoring
    from models.registry import ModelNotFound

    overrides = {k: v for k, v in {"device": device, "inference_precision": precision}.items() if v}
    settings = _settings(ctx).model_copy(update=overrides)
    try:
        bench_scoring(settings, task, n=n, n_single=n_single, batch=batch, train_if_missing=train_if_missing,
                      also=also or (), out=typer.echo)
    except ModelNotFound as e:
        raise _fail(e) from e


def register(app: typer.Typer) -> None:
    """Mount `train`, `eval`, `bench` and the `models` group on the top-level CLI."""
    app.add_typer(bench_app, name="bench")
    app.command("train")(train_command)
    app.command("eval")(eval_command)
    from feedback.retrain_cli import retrain_command

    app.command("retrain")(retrain_command)
    app.add_typer(models_app, name="models")
