"""Building scorers from settings: the one entry point the stream worker and CLI use."""

from __future__ import annotations

from collections.abc import Sequence

from models.data import SplitConfig, stratified_split
from models.engine import Engine
from models.registry import Registry
from models.tasks import get_task
from streams.settings import VigilSettings

PARITY_SAMPLE = 1000


def parity_sample(settings: VigilSettings, task: str, n: int = PARITY_SAMPLE) -> list[str]:
    """Real texts for the reduced-precision check: the task's held-out validation rows."""
    spec = get_task(task)
    split = stratified_split(spec.load(settings.bundled_data_dir), SplitConfig())
    return [r.text for r in split.val[:: max(1, len(split.val) // n)]][:n]


def load_scorer(settings: VigilSettings, task: str, version: str | None = None,
                parity_texts: Sequence[str] | None = None) -> Engine:
    """The scorer for ``task``: ``version``, else settings.sentiment_model / triage_model ('champion').

    Raises ``models.registry.ModelNotFound`` (message: run `vigil train --task TASK`) when the
    registry has no such model.
    """
    spec = get_task(task)
    wanted = version or {"sentiment": settings.sentiment_model, "triage": settings.triage_model}[spec.name]
    model_dir = Registry(settings.registry_dir).resolve(task, wanted)
    precision = settings.inference_precision
    needs_parity = precision in ("int8", "fp16", "bf16") or (precision == "auto" and settings.device != "cpu")
    if parity_texts is None and needs_parity:
        parity_texts = parity_sample(settings, task)
    return Engine(
        model_dir,
        device=settings.device,
        max_length=settings.max_length,
        batch_size=settings.score_batch_size,
        precision=precision,
        parity_texts=parity_texts or (),
        max_flip_rate=settings.parity_max_flip_rate,
        num_threads=settings.cpu_threads,
    )
