"""Classification metrics: accuracy, macro-F1, per-class report, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.scoring import Scorer

# Several of the engine's 4096-text chunks a call, so that it still tokenizes the next chunk while
# the device scores one.
_LABEL_CHUNK = 16_384


@dataclass(frozen=True, slots=True)
class ClassReport:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True, slots=True)
class EvalReport:
    labels: tuple[str, ...]
    n: int
    accuracy: float
    macro_f1: float
    per_class: tuple[ClassReport, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true label, columns: predicted label

    def summary(self, eval_set: str) -> dict[str, object]:
        return {"eval_set": eval_set, "n": self.n, "accuracy": round(self.accuracy, 5),
                "macro_f1": round(self.macro_f1, 5)}


class UnknownLabels(ValueError):
    pass


def evaluate(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> EvalReport:
    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError(f"need equally many true and predicted labels, got {len(y_true)} and {len(y_pred)}")
    index = {label: i for i, label in enumerate(labels)}
    if unknown := sorted({y for y in (*y_true, *y_pred) if y not in index}):
        raise UnknownLabels(f"labels {unknown[:10]} are not among the model's labels {list(labels)[:10]}...")
    k = len(labels)
    cm = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred, strict=True):
        cm[index[t]][index[p]] += 1
    per_class = []
    for i, label in enumerate(labels):
        tp = cm[i][i]
        predicted = sum(cm[r][i] for r in range(k))
        support = sum(cm[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(ClassReport(label, precision, recall, f1, support))
    present = [c for c in per_class if c.support > 0]  # macro over classes that occur in the data
    return EvalReport(
        labels=tuple(labels),
        n=len(y_true),
        accuracy=sum(cm[i][i] for i in range(k)) / len(y_true),
        macro_f1=sum(c.f1 for c in present) / len(present),
        per_class=tuple(per_class),
        confusion=tuple(tuple(row) for row in cm),
    )


def predict_labels(scorer: Scorer, texts: Sequence[str], chunk: int = _LABEL_CHUNK) -> tuple[list[str], int]:
    """Each text's predicted label, and how many texts were truncated. Scored ``chunk`` texts at a
    time and only the labels kept: a Prediction holds every class's probability (3.9 KiB for a
    triage text), gigabytes for a file of a million rows."""
    labels: list[str] = []
    truncated = 0
    for start in range(0, len(texts), chunk):
        predictions = scorer.score(texts[start : start + chunk])
        labels += [p.label for p in predictions]
        truncated += sum(p.truncated for p in predictions)
    return labels, truncated


def write_confusion_png(report: EvalReport, path: Path, title: str) -> Path:
    # Imported here: matplotlib takes a second to import and only `vigil eval --png` needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(report.labels)
    size = max(5.0, 0.18 * k + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(report.confusion, cmap="Blues")
    ax.set_xticks(range(k), report.labels, rotation=90, fontsize=6 if k > 20 else 9)
    ax.set_yticks(range(k), report.labels, fontsize=6 if k > 20 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}  acc={report.accuracy:.3f}  macro-F1={report.macro_f1:.3f}")
    if k <= 12:
        for i, row in enumerate(report.confusion):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
