"""Fine-tuning a task classifier from the base encoder, into the registry."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from torch import nn

from models.data import SplitConfig, cap_rows, fingerprint, stratified_split
from models.engine import mixed_precision, pad_batch, pick_device, predict_probs, set_cpu_threads
from models.evaluate import EvalReport, evaluate
from models.links import remove_links
from models.modeling import MeanPoolClassifier, init_from_encoder
from models.registry import ModelCard, ModelRegistry
from models.tasks import get_task
from streams.alerting.triage import calibration_summary
from streams.settings import VigilSettings

Profile = Literal["quick", "full"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str = "custom"
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of the top encoder layer.")
    head_lr: float = Field(1e-3, gt=0, description="Peak learning rate of the new classifier head.")
    layer_lr_decay: float = Field(1.0, gt=0, le=1, description="Each lower layer's LR = this x the one above.")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(128, ge=8, le=512)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    freeze_embeddings: bool = False
    encoder_layers: int | None = Field(
        None, ge=1, description="Keep the base encoder's bottom N layers (fewer scores faster; default: all).")
    patience: int = Field(2, ge=1, description="Validation rounds without improvement before stopping.")
    eval_every: int | None = Field(None, ge=1, description="Validate every N steps (default: each epoch).")
    train_cap: int | None = Field(None, ge=1, description="Train on a seeded sample of at most N rows.")
    val_cap: int | None = Field(None, ge=1, description="Validate on a seeded sample of at most N rows.")
    sources: tuple[str, ...] | None = Field(None, description="Corpora to use (default: all of the task's).")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 13
    group_duplicates: bool = Field(
        True, description="Keep texts the model cannot tell apart (case, spacing, links) on one side of the split.")
    seed: int = 0
    autocast: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Mixed precision of the passes: auto is bf16 where the hardware computes it.")
    calibration_precision: float = Field(
        0.9, gt=0, le=1, description="Precision wanted of automatically routed predictions; the lowest "
        "validation confidence threshold reaching it is recorded in the card (metrics.calibration).",
    )
    calibration_min_support: int = Field(20, ge=1, description="Validation predictions the threshold must keep.")


def profile_config(profile: Profile, task: str, **overrides: object) -> TrainConfig:
    """The named recipe for ``task`` with ``overrides`` (None values are ignored) applied."""
    if profile == "quick":
        # Sized so that both tasks train and validate in about 3 minutes on 2 shared CPU cores,
        # leaving margin under the 5-minute demo budget.
        base: dict[str, object] = dict(
            profile="quick", epochs=1, max_length=64, batch_size=32, lr=1e-4, head_lr=3e-3,
            freeze_embeddings=True, warmup_ratio=0.1, max_steps=None,
            train_cap=3000 if task == "sentiment" else 3600,
        )
    elif profile == "full":
        # The best of the variants measured on an H100 (benchmarks/RESULTS.md, "Model quality").
        per_task = dict(epochs=15, batch_size=16, lr=1e-4) if task == "sentiment" else dict(
            epochs=10, batch_size=32, lr=2e-4)
        base = dict(
            profile="full", max_length=128, head_lr=1e-3,
            layer_lr_decay=0.9, label_smoothing=0.1, patience=2, warmup_ratio=0.06, **per_task,
        )
    else:
        raise ValueError(f"unknown profile {profile!r}; use quick or full")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


@dataclass(frozen=True, slots=True)
class TrainResult:
    card: ModelCard
    model: MeanPoolClassifier  # the saved (best-validation) weights, on CPU, in eval mode
    report: EvalReport
    steps: int
    seconds: float
    stopped_early: bool


def _param_groups(model: MeanPoolClassifier, cfg: TrainConfig) -> list[dict]:
    """Layer-wise LR: the head at head_lr, encoder layer i at lr * decay^(depth above it)."""
    n_layers = model.config.num_hidden_layers
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("classifier."):
            lr = cfg.head_lr
        elif name.startswith("bert.embeddings."):
            lr = cfg.lr * cfg.layer_lr_decay**n_layers
        else:
            layer = int(name.split("bert.encoder.layer.")[1].split(".")[0])
            lr = cfg.lr * cfg.layer_lr_decay ** (n_layers - 1 - layer)
        no_decay = name.endswith(".bias") or "LayerNorm" in name
        groups.setdefault((lr, 0.0 if no_decay else cfg.weight_decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def optimise_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    y: torch.Tensor,
    autocast: torch.dtype | None,
    grad_clip: float,
) -> torch.Tensor:
    """One optimiser step on one batch: autocast forward, loss in fp32, clipped gradients."""
    with torch.autocast(ids.device.type, dtype=autocast, enabled=autocast is not None):
        logits = model(input_ids=ids, attention_mask=mask).logits
    loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return loss


def train(
    task: str,
    cfg: TrainConfig,
    *,
    data_dir: Path,
    registry_root: Path,
    encoder_dir: Path,
    device: str = "auto",
    progress: bool = True,
    console: Console | None = None,
) -> TrainResult:
    """Fine-tune ``task`` per ``cfg`` and add the best validation checkpoint as a new registry version."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    spec = get_task(task)
    labels = spec.labels(data_dir)
    split_cfg = SplitConfig(cfg.val_fraction, cfg.split_seed, cfg.group_duplicates)
    sources = cfg.sources or tuple(spec.sources)
    split = stratified_split(spec.load(data_dir, sources), split_cfg)
    train_rows = cap_rows(split.train, cfg.train_cap, cfg.seed)
    val_rows = cap_rows(split.val, cfg.val_cap, cfg.split_seed)
    label_index = {label: i for i, label in enumerate(labels)}

    dev = pick_device(device)
    if dev.type == "cpu":
        set_cpu_threads(None)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    if spec.remove_links:
        remove_links(tokenizer.backend_tokenizer)
    model = init_from_encoder(encoder_dir, labels, cfg.dropout, cfg.encoder_layers).to(dev)
    if cfg.freeze_embeddings:
        model.bert.embeddings.requires_grad_(False)

    def tok(rows):
        return tokenizer([r.text for r in rows], truncation=True, max_length=cfg.max_length,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    train_ids, val_ids = tok(train_rows), tok(val_rows)
    y_train = torch.tensor([label_index[r.label] for r in train_rows])
    val_true = [r.label for r in val_rows]

    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), fused=dev.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(int(total * cfg.warmup_ratio), total))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    autocast = mixed_precision(dev, cfg.autocast)
    generator = torch.Generator().manual_seed(cfg.seed)
    eval_every = cfg.eval_every or steps_per_epoch

    def validate() -> EvalReport:
        model.eval()
        probs = predict_probs(model, val_ids, tokenizer.pad_token_id, 128, dev, autocast)
        model.train()
        return evaluate(val_true, [labels[i] for i in probs.argmax(1)], labels)

    best: tuple[float, dict] | None = None  # macro-F1 of the best validation round, its weights
    rounds_without_gain, step, stopped_early = 0, 0, False
    model.train()
    bar = Progress(TextColumn(f"[bold]{task}[/] {cfg.profile}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                   disable=not progress)
    with bar:
        bar_task = bar.add_task("train", total=total, info="")
        while step < total and not stopped_early:
            for batch in torch.randperm(len(train_rows), generator=generator).split(cfg.batch_size):
                ids, mask = pad_batch([train_ids[i] for i in batch.tolist()], tokenizer.pad_token_id)
                ids, mask, y = ids.to(dev), mask.to(dev), y_train[batch].to(dev)
                loss = optimise_step(model, optimizer, scheduler, loss_fn, ids, mask, y, autocast, cfg.grad_clip)
                step += 1
                bar.update(bar_task, advance=1, info=f"loss {loss.item():.3f}")
                if step % eval_every == 0 or step == total:
                    report = validate()
                    bar.update(bar_task, info=f"val acc {report.accuracy:.3f} F1 {report.macro_f1:.3f}")
                    if best is None or report.macro_f1 > best[0]:
                        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                        best, rounds_without_gain = (report.macro_f1, state), 0
                    else:
                        rounds_without_gain += 1
                        if rounds_without_gain >= cfg.patience:
                            stopped_early = True
                            break
                if step >= total:
                    break

    assert best is not None  # the loop validates at least once: step reaches total
    _, state = best
    model.load_state_dict(state)
    model.eval()
    # The card's figures are the saved fp32 model's: any reduced precision is checked against fp32
    # when an engine loads it. The calibration is the confidence below which predictions go to people.
    val_probs = predict_probs(model, val_ids, tokenizer.pad_token_id, 128, dev)
    report = evaluate(val_true, [labels[i] for i in val_probs.argmax(1)], labels)
    calibration = calibration_summary(
        zip(val_probs.max(1).tolist(), [labels[i] == t for i, t in zip(val_probs.argmax(1), val_true, strict=True)],
            strict=True),
        cfg.calibration_precision, min_support=cfg.calibration_min_support,
    )
    model = model.to("cpu").float().eval()
    eval_set = (f"held-out validation split of {'+'.join(sources)} (val_fraction={cfg.val_fraction}, "
                f"split_seed={cfg.split_seed}" + (f", sample of {len(val_rows)}" if cfg.val_cap else "") + ")")

    def write(target: Path) -> None:
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)

    card = ModelRegistry(registry_root).add(task, write, dict(
        model_name=spec.model_name,
        labels=list(labels),
        metrics={**report.summary(eval_set), "steps": step, "stopped_early": stopped_early,
                 "train_rows": len(train_rows), "calibration": calibration},
        data_fingerprint=fingerprint(train_rows, split_cfg, sources),
        base_encoder=str(encoder_dir),
        max_length=cfg.max_length,
        training_config={**cfg.model_dump(mode="json"), "device": str(dev),
                         "autocast": "bf16" if autocast else "fp32", "remove_links": spec.remove_links,
                         "encoder_layers": model.config.num_hidden_layers},
    ))
    return TrainResult(card, model, report, step, time.perf_counter() - started, stopped_early)


def train_task(settings: VigilSettings, task: str, profile: Profile = "quick", console: Console | None = None,
               **overrides: object) -> TrainResult:
    """Train ``task`` with a named profile into ``settings.registry_dir`` (the CLI and demo entry
    point). The new version serves only once promoted, unless it is the task's first."""
    from models.encoder import base_encoder_dir

    cfg = profile_config(profile, task, **overrides)
    return train(task, cfg, data_dir=settings.bundled_data_dir, registry_root=settings.registry_dir,
                 encoder_dir=base_encoder_dir(settings.base_encoder_dir), device=settings.device,
                 console=console)
