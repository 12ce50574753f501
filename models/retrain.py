"""Incremental fine-tuning: from the champion's weights, on human corrections plus a replay sample
of the original training data (so the model does not forget what it knew), into the registry.

Also the two data sets the promotion gate needs from the model side: the frozen gold set (the
champion's own held-out validation split, rebuilt from its card) and predictions on any texts.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from models.data import SplitConfig, cap_rows, duplicate_key, fingerprint, stratified_split
from models.engine import encode, mixed_precision, pad_batch, pick_device, predict_probs, set_cpu_threads
from models.evaluate import evaluate
from models.links import version_tokenizer
from models.modeling import MeanPoolClassifier, labels_of
from models.registry import ModelCard, ModelRegistry
from models.tasks import Row, get_task
from models.train import linear_schedule, optimise_step

CORRECTIONS_SOURCE = "corrections"


class RetrainError(RuntimeError):
    """Retraining cannot start (no champion, unknown labels in the corrections, ...)."""


class RetrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(3e-5, gt=0, description="Encoder LR: low, the champion is already tuned.")
    head_lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(128, ge=8, le=512)
    grad_clip: float = Field(1.0, gt=0)
    replay_size: int = Field(2000, ge=0)
    corrections_share: float = Field(
        0.5, ge=0, lt=1, description="Least share of each epoch that is corrections: they are repeated "
        "(whole) until they make up this much of the mix with the replay sample. 0: each once.")
    autocast: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Mixed precision of the passes: auto is bf16 where the hardware computes it.")
    seed: int = 0


@dataclass(frozen=True, slots=True)
class DataOrigin:
    """Which corpora and split a version was trained from: the gold set and the replay pool."""

    sources: tuple[str, ...]
    split: SplitConfig


def data_origin(card: ModelCard) -> DataOrigin:
    cfg = card.training_config
    sources = tuple(cfg.get("sources") or get_task(card.task).sources)
    # A card without group_duplicates is from before duplicates were grouped: split row by row.
    return DataOrigin(sources, SplitConfig(cfg.get("val_fraction", 0.1), cfg.get("split_seed", 13),
                                           cfg.get("group_duplicates", False)))


@dataclass(frozen=True, slots=True)
class GoldSet:
    rows: list[Row]
    fingerprint: str
    description: str


def gold_set(card: ModelCard, data_dir: Path, cap: int | None = None, corrected: Iterable[str] = ()) -> GoldSet:
    """The held-out validation split the champion's lineage was trained around, less the rows whose
    text people corrected (``corrected``, compared as the model reads them): the same card and
    corrections always give the same rows (seeded split).

    The stream can carry gold texts (the demo replays the bundled files), and a challenger trained
    on their corrections would be judged on its own training rows, its gold accuracy raised above
    the champion's for it. Leaving them out judges both models on rows neither trained on."""
    origin = data_origin(card)
    split = stratified_split(get_task(card.task).load(data_dir, origin.sources), origin.split)
    sampled = cap_rows(split.val, cap, origin.split.seed)
    rows = _leaving_out(sampled, corrected)
    if not rows:
        raise RetrainError(f"people corrected the text of every one of the {len(sampled)} gold rows of {card.task} "
                           f"{card.version}, so no row is left that a challenger did not train on: raise or unset "
                           "VIGIL_GOLD_CAP to judge on more of the held-out split")
    return GoldSet(rows, fingerprint(rows, origin.split, origin.sources),
                   f"gold: held-out validation split of {'+'.join(origin.sources)} (val_fraction="
                   f"{origin.split.val_fraction}, split_seed={origin.split.seed}"
                   + (f", sample of {len(sampled)}" if cap and cap < len(split.val) else "")
                   + (f", {len(sampled) - len(rows)} corrected texts left out" if len(rows) < len(sampled) else "")
                   + ")")


def replay_pool(card: ModelCard, data_dir: Path, labelled: Iterable[str] = ()) -> list[Row]:
    """The original TRAINING rows (never the gold rows) a replay sample is drawn from, less those
    whose text people labelled (``labelled``, compared as the model reads them): such a text is a
    correction the challenger trains on, or one held out to judge it by, and a replayed copy would
    train it on what judges it, or on the corpus's label beside the person's."""
    origin = data_origin(card)
    split = stratified_split(get_task(card.task).load(data_dir, origin.sources), origin.split)
    return _leaving_out(split.train, labelled)


def _leaving_out(rows: Sequence[Row], texts: Iterable[str]) -> list[Row]:
    """``rows`` less those whose text the model reads as one of ``texts`` (``duplicate_key``)."""
    seen = {duplicate_key(text) for text in texts}
    return [r for r in rows if duplicate_key(r.text) not in seen]


def corrections_repeats(n_corrections: int, n_replay: int, share: float) -> int:
    """How many times each correction goes into an epoch so that corrections make up at least
    ``share`` of it: a few hundred corrections next to thousands of replay rows would otherwise
    be a small minority of every batch, and the model would barely move towards them."""
    if n_corrections == 0 or n_replay == 0 or share <= 0:
        return 1
    # rounded first: 0.3 * 7 / 0.7 is 3.0000000000000004 in floats, and must stay 3
    return max(1, math.ceil(round(share * n_replay / ((1 - share) * n_corrections), 9)))


def prior_resample(labels: Sequence[str], prior: Mapping[str, float], n: int, seed: int) -> list[int]:
    """``n`` indices into ``labels`` (the corrections' labels) whose class mix is ``prior`` as
    closely as whole rows allow. The queue picks what the champion is unsure of, so its label mix
    is not the stream's, and a model fine-tuned on it learns the queue's mix. Each class's count is
    met with whole copies of all its corrections plus a seeded sample of the rest (stratified: no
    correction drops out by chance); the prior's classes without corrections give their share to
    the others in proportion, and corrected classes the prior lacks get none."""
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    weights = {y: prior.get(y, 0.0) for y in sorted(by_class)}
    mass = sum(weights.values())
    if mass <= 0:
        raise ValueError(f"the prior {dict(prior)} gives no weight to any corrected class {sorted(by_class)}")
    exact = {y: n * w / mass for y, w in weights.items()}
    counts = {y: math.floor(x) for y, x in exact.items()}
    # largest remainders take the rows rounding left over; ties by label, so the split is fixed
    for y in sorted(exact, key=lambda y: (counts[y] - exact[y], y))[: n - sum(counts.values())]:
        counts[y] += 1
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for y, k in counts.items():
        rows = by_class[y]
        whole, rest = divmod(k, len(rows))
        out += rows * whole + sorted(rng.choice(rows, size=rest, replace=False).tolist())
    return sorted(out)


def corrections_fingerprint(pairs: Sequence[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for text, label in pairs:
        h.update(json.dumps([label, text], ensure_ascii=False).encode("utf-8") + b"\n")
    return "sha256:" + h.hexdigest()


def load_classifier(model_dir: Path, device: torch.device) -> tuple[MeanPoolClassifier, object]:
    """A version's model and its tokenizer as saved (a challenger saves it again, unchanged)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = MeanPoolClassifier.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    return model, version_tokenizer(model_dir)


def predict(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int, device: torch.device,
            batch_size: int = 128) -> tuple[list[str], np.ndarray]:
    """Labels and top-1 confidences of ``texts`` (input order)."""
    if not texts:
        return [], np.empty(0, dtype=np.float32)
    labels = labels_of(model)
    # fp32, like the figures on a trained model's card: the gate judges the weights that are saved.
    probs = predict_probs(model, encode(tokenizer, texts, max_length).ids, tokenizer.pad_token_id, batch_size, device)
    return [labels[i] for i in probs.argmax(1)], probs.max(1)


@dataclass(frozen=True, slots=True)
class RetrainResult:
    card: ModelCard
    model: MeanPoolClassifier  # the challenger, on the training device, in eval mode
    tokenizer: object
    gold_predictions: list[str]
    steps: int
    seconds: float


def fine_tune(
    champion: ModelCard,
    champion_dir: Path,
    corrections: Sequence[tuple[str, str]],
    cfg: RetrainConfig,
    *,
    data_dir: Path,
    registry_root: Path,
    gold: GoldSet,
    device: str = "auto",
    cpu_threads: int | None = None,
    class_prior: Mapping[str, float] | None = None,
    labelled: Iterable[str] = (),
    extra_config: dict | None = None,
) -> RetrainResult:
    """Fine-tune ``champion`` on (text, label) ``corrections`` + a replay sample; add the result as
    a new registry version (its parent is the champion) and return it. Deterministic for cfg.seed
    on CPU. With ``class_prior`` (label -> share of the stream), the corrections' rows are resampled
    to that class mix (``prior_resample``) instead of repeated alike. ``labelled``: the texts of
    every correction, trained on or held out, which the replay sample leaves out (``replay_pool``).
    ``extra_config`` (e.g. dropped annotators) goes into the card's training_config."""
    started = time.perf_counter()
    labels = tuple(champion.labels)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({y for _, y in corrections if y not in index})
    if unknown:
        raise RetrainError(f"corrections use labels {unknown} that {champion.task} {champion.version} does not have")
    if not corrections:
        raise RetrainError("no corrections to train on")
    pool = replay_pool(champion, data_dir, [*labelled, *(text for text, _ in corrections)])
    replay = cap_rows(pool, cfg.replay_size, cfg.seed) if cfg.replay_size else []
    repeats = corrections_repeats(len(corrections), len(replay), cfg.corrections_share)
    picked = (list(corrections) * repeats if class_prior is None else
              [corrections[i] for i in prior_resample([y for _, y in corrections], class_prior,
                                                      len(corrections) * repeats, cfg.seed)])
    rows = [Row(t, y, CORRECTIONS_SOURCE) for t, y in picked] + replay

    dev = pick_device(device)
    if dev.type == "cpu":
        set_cpu_threads(cpu_threads)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_classifier(champion_dir, dev)
    if labels_of(model) != labels:
        raise RetrainError(f"{champion_dir}: model labels differ from its card; the version is corrupt")
    ids = encode(tokenizer, [r.text for r in rows], cfg.max_length).ids
    y_all = torch.tensor([index[r.label] for r in rows])

    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    head = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    optimizer = torch.optim.AdamW([{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}],
                                  weight_decay=cfg.weight_decay, fused=dev.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(int(total * cfg.warmup_ratio), total))
    loss_fn = nn.CrossEntropyLoss()
    autocast = mixed_precision(dev, cfg.autocast)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    step = 0
    while step < total:
        for batch in torch.randperm(len(rows), generator=generator).split(cfg.batch_size):
            x, mask = pad_batch([ids[i] for i in batch.tolist()], tokenizer.pad_token_id)
            x, mask, y = x.to(dev), mask.to(dev).long(), y_all[batch].to(dev)
            optimise_step(model, optimizer, scheduler, loss_fn, x, mask, y, autocast, cfg.grad_clip)
            step += 1
            if step >= total:
                break
    model.eval()

    gold_pred, _ = predict(model, tokenizer, [r.text for r in gold.rows], cfg.max_length, dev)
    report = evaluate([r.label for r in gold.rows], gold_pred, labels)
    origin = data_origin(champion)

    def write(target: Path) -> None:
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)

    n_corr = len(corrections)
    card = ModelRegistry(registry_root).add(champion.task, write, {
        "model_name": champion.model_name,
        "labels": list(labels),
        "metrics": {**report.summary(gold.description), "steps": step, "train_rows": len(rows)},
        "data_fingerprint": fingerprint(rows, origin.split, (*origin.sources, CORRECTIONS_SOURCE)),
        "base_encoder": champion.base_encoder,
        "max_length": cfg.max_length,
        "training_config": {
            **cfg.model_dump(mode="json"),
            "profile": "retrain",
            # kept so the next retrain rebuilds the same gold set and replay pool
            "sources": list(origin.sources), "val_fraction": origin.split.val_fraction,
            "split_seed": origin.split.seed, "group_duplicates": origin.split.group_duplicates,
            "fine_tuned_from": champion.version,
            "remove_links": champion.training_config.get("remove_links", False),  # its tokenizer is the champion's
            "encoder_layers": model.config.num_hidden_layers,  # and its depth
            "corrections": n_corr,
            "corrections_fingerprint": corrections_fingerprint(corrections),
            "replay_rows": len(replay), "replay_pool_rows": len(pool),
            "corrections_repeats": repeats,
            "class_prior": None if class_prior is None else dict(class_prior),
            "gold_fingerprint": gold.fingerprint,
            "device": str(dev),
            "autocast": "bf16" if autocast else "fp32",
            **(extra_config or {}),
        },
    })
    return RetrainResult(card, model, tokenizer, gold_pred, step, time.perf_counter() - started)
