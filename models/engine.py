"""The inference engine: a registry model behind the ``Scorer`` interface.

Texts are tokenised once (fast tokenizer), sorted by length and batched so that each batch pads
only to its own longest text, run through the forward (torch under ``torch.inference_mode``, traced
on CPU, or an ONNX Runtime session on CPU) and put back in input order.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import re
import warnings
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from models import onnx_backend
from models.data import SplitConfig, stratified_split
from models.registry import ModelCard, ModelRegistry
from models.scoring import Prediction
from models.tasks import get_task
from streams.settings import VigilSettings

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "int8", "fp16", "bf16", "onnx", "onnx-int8"]
# (padded ids, mask) of one batch, on CPU -> its class probabilities (float32, any device).
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# A token rarely spans more than ~10 characters of real text: reading this far first spares the
# tokenizer most of a long text without changing what the model sees. A start that does not fill
# the window is read further (_window_ids): a text without a word break is read whole, about 4/3 of
# its length in all, which the stream's VIGIL_MAX_TEXT_CHARS bounds.
_CHARS_PER_TOKEN_CAP = 50
# How much more of a text is read each time its cut part did not fill the window.
_CAP_GROWTH = 4
# Characters every tokenizer splits words at. Other whitespace is taken for part of a word, which
# only means reading more of a text than needed.
_LAST_WORD = re.compile(r"[^ \t\n\r]*")
# Texts per tokenization chunk when a call is large enough to overlap tokenizing with compute.
_OVERLAP_CHUNK = 4096


class ScoringError(RuntimeError):
    """The engine cannot score the given input."""


@dataclass(frozen=True, slots=True)
class Encoded:
    ids: list[list[int]]
    truncated: list[bool]


@dataclass(frozen=True, slots=True)
class ParityReport:
    precision: str
    n: int
    label_flips: int
    max_abs_prob_diff: float
    max_flip_rate: float

    @property
    def flip_rate(self) -> float:
        return self.label_flips / self.n if self.n else 0.0

    @property
    def accepted(self) -> bool:
        return self.flip_rate <= self.max_flip_rate


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ScoringError("device 'cuda' was asked for but torch sees no GPU; set VIGIL_DEVICE=cpu or auto")
    return torch.device(device)


def clean_text(text: str) -> str:
    """Make any Python str encodable as UTF-8 (lone surrogates become U+FFFD)."""
    if not isinstance(text, str):
        raise ScoringError(f"can only score str, got {type(text).__name__}")
    return _LONE_SURROGATE.sub("\ufffd", text)


class ModelTokenizer:
    """A version's Rust tokenizer (its tokenizer.json) with its pad and separator ids: all that
    scoring asks of a tokenizer. Loading it does not import transformers (12.7 s on a 2-core CPU,
    benchmarks/RESULTS.md), so a CPU worker whose ONNX graph and parity figures are cached starts
    without it. ``encode`` takes this or a transformers fast tokenizer alike (training and
    retraining use those)."""

    def __init__(self, model_dir: Path) -> None:
        path, config_path = Path(model_dir) / "tokenizer.json", Path(model_dir) / "tokenizer_config.json"
        if not (path.is_file() and config_path.is_file()):
            raise ScoringError(f"{model_dir} has no fast tokenizer (tokenizer.json and tokenizer_config.json); "
                               "retrain it")
        self.backend_tokenizer = Tokenizer.from_file(str(path))
        config = json.loads(config_path.read_text(encoding="utf-8"))
        self.pad_token_id = self._special_id(model_dir, config, "pad_token")
        self.sep_token_id = self._special_id(model_dir, config, "sep_token")

    def _special_id(self, model_dir: Path, config: dict, name: str) -> int:
        token = config.get(name)
        token = token.get("content") if isinstance(token, dict) else token
        token_id = self.backend_tokenizer.token_to_id(token) if isinstance(token, str) else None
        if token_id is None:
            raise ScoringError(f"{model_dir}: tokenizer_config.json names no {name} of the vocabulary; "
                               "the version is corrupt, retrain it")
        return token_id


def config_labels(model_dir: Path) -> tuple[str, ...]:
    """The class labels in a version's config.json, in output order."""
    id2label = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))["id2label"]
    return tuple(id2label[str(i)] for i in range(len(id2label)))


_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _backend(tokenizer, max_length: int) -> Tokenizer:
    """The tokenizer's Rust core, truncating at ``max_length``. Calling it directly skips the
    per-text Python conversion of the transformers wrapper, which costs 25x the tokenizing itself."""
    per_tokenizer = _BACKENDS.setdefault(tokenizer, {})
    if max_length not in per_tokenizer:
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_padding()
        backend.enable_truncation(max_length)
        per_tokenizer[max_length] = backend
    return per_tokenizer[max_length]


def encode(tokenizer, texts: Sequence[str], max_length: int) -> Encoded:
    """Token ids cut to ``max_length`` (special tokens included), and whether each text was cut."""
    if not texts:
        return Encoded([], [])
    # One token more than fits tells "exactly fits" apart from "was cut".
    ids = _window_ids(_backend(tokenizer, max_length + 1), [clean_text(t) for t in texts], max_length)
    sep = tokenizer.sep_token_id
    truncated = [len(seq) > max_length for seq in ids]
    return Encoded([seq[: max_length - 1] + [sep] if cut else seq for seq, cut in zip(ids, truncated, strict=True)],
                   truncated)


def _window_ids(backend: Tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Each text's ids as far as one token past the window, tokenizing only the start of a huge
    text. A start that does not fill the window is read further: a text led by thousands of blank
    lines or by words the tokenizer makes one [UNK] each would otherwise be scored as what its first
    characters give (often nothing), not as the words the model can still read."""
    ids: list[list[int]] = [[] for _ in texts]
    pending, cap = list(range(len(texts))), max_length * _CHARS_PER_TOKEN_CAP
    while pending:
        starts = [texts[i][:cap] for i in pending]
        unread = []
        for i, start, enc in zip(pending, starts, backend.encode_batch(starts), strict=True):
            if len(start) == len(texts[i]) or _fills_window(enc, start, max_length):
                ids[i] = enc.ids
            else:
                unread.append(i)
        pending, cap = unread, cap * _CAP_GROWTH
    return ids


def _fills_window(enc, start: str, max_length: int) -> bool:
    """Whether the start of a text gives the whole text's window and the token past it: those
    tokens exist and end before the last word, which the cut may have split."""
    if len(enc.ids) <= max_length:
        return False
    last_word_at = len(start) - _LAST_WORD.match(start[::-1]).end()
    return enc.offsets[max_length - 1][1] <= last_word_at


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    mask = np.arange(lengths.max()) < lengths[:, None]
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    # Row-major boolean assignment fills each row's prefix in order: one copy instead of a loop.
    ids[mask] = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(mask)


class _Probabilities(nn.Module):
    """A classifier's pass as one module, eager or traced: ids and mask in, probabilities out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Softmax in fp32 whatever the logits' dtype; autocast keeps it there too (fp32 op on CPU and CUDA).
        return torch.softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)


def torch_forward(model: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None = None) -> Forward:
    probabilities = _Probabilities(model)

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Plain copies: allocating pinned memory per batch cost more than the copies it sped up.
        ids, mask = ids.to(device), mask.to(device).long()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return probabilities(ids, mask)

    return forward


class TracedForward:
    """``torch_forward`` on CPU, traced with TorchScript: the same probabilities to the last bit, for
    any batch size and length (tests check both), but each pass runs in C++ without the GIL. An eager
    pass takes the GIL back for every one of its hundreds of operator calls, so in a worker, whose
    event loop holds the GIL much of the time, the passes on the lanes mostly waited for it: beside
    one busy Python thread, eager bf16 scoring fell from 724 to 49 msgs/s on the 2-core CPU, traced
    from 820 to 414 (``python -m benchmarks.traced_forward``, benchmarks/RESULTS.md).

    Raises ``ScoringError`` when the model does not trace.
    """

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        self._autocast_dtype = autocast_dtype
        # Padded, so that the recorded graph really applies the attention mask.
        ids = torch.full((2, 8), 100, dtype=torch.long)
        mask = torch.ones_like(ids)
        mask[1, 4:] = 0
        try:
            with warnings.catch_warnings():
                # Deprecated in favour of torch.compile/export, neither of which gives a GIL-free CPU
                # pass without a C++ toolchain at run time. The tracer's shape warnings are about a
                # branch on the mask's length against itself, constant for every input.
                warnings.simplefilter("ignore")
                with torch.no_grad(), self._autocast():
                    self._module = torch.jit.trace(_Probabilities(model).eval(), (ids, mask), check_trace=False)
        except Exception as e:  # noqa: BLE001 - whatever the tracer trips on, the caller can score eagerly
            raise ScoringError(f"the model could not be traced: {e}") from e

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cpu", dtype=self._autocast_dtype, enabled=self._autocast_dtype is not None)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # No profiling executor: it re-specialises the graph for each new shape and fuses nothing on
        # CPU. The flag is per thread, so it is set here, in the calling lane.
        with torch.jit.optimized_execution(False), self._autocast():
            return self._module(ids, mask.long())


def linears_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` whose Linear layers hold ``dtype`` weights, for passes under autocast to
    ``dtype``. It computes exactly what the fp32 model does under autocast, which rounds each fp32
    weight the same way, but without casting every weight again on every forward pass (5-6% of a
    bf16 pass of 16 texts on the 2-core CPU, see benchmarks/RESULTS.md). The fp32 model stays as it
    is: the parity check's reference. The copy shares its other tensors (embeddings, layer norms)
    with it, so it costs only the reduced Linear weights: 20 MiB for MiniLM in bf16, where a whole
    copy would have held 66."""
    # deepcopy takes what the memo holds for a tensor instead of copying it: the fp32 model's own
    # tensors, and each Linear weight already cast (no passing fp32 copy of it).
    memo: dict[int, object] = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            memo.update({id(p): nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in module.parameters()})
    return copy.deepcopy(model, memo=memo)


def forward_fitting(forward: Forward, seqs: Sequence[Sequence[int]], idx: Sequence[int], pad_id: int) -> torch.Tensor:
    """``forward`` on the texts ``idx``; a batch that does not fit in this process's share of GPU
    memory runs as two halves (recursively), so workers sharing a GPU slow down instead of failing."""
    try:
        return forward(*pad_batch([seqs[i] for i in idx], pad_id))
    except torch.cuda.OutOfMemoryError as e:
        if len(idx) == 1:
            raise ScoringError(
                "a single text does not fit in this worker's share of GPU memory: lower VIGIL_MAX_LENGTH, "
                "raise VIGIL_GPU_MEMORY_FRACTION or run fewer workers on this GPU") from e
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(idx) // 2
        log.warning("a batch of %d texts did not fit in GPU memory; running it as %d + %d", len(idx), half,
                    len(idx) - half)
        return torch.cat([forward_fitting(forward, seqs, idx[:half], pad_id),
                          forward_fitting(forward, seqs, idx[half:], pad_id)])


@torch.inference_mode()
def run_batches(forward: Forward, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int,
                num_labels: int, lanes: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Class probabilities (float32, input order) for already-encoded sequences.

    On CUDA nothing waits on the GPU until the end: while batch k runs, the host pads batch k+1.
    With ``lanes`` (CPU), the passes run side by side on its threads.
    """
    batches = length_batches([len(s) for s in seqs], batch_size)
    if lanes is not None and len(batches) > 1:
        def in_lane(idx: list[int]) -> torch.Tensor:
            with torch.inference_mode():  # per thread: the decorator covers only the caller's
                return forward_fitting(forward, seqs, idx, pad_id)

        outputs = list(lanes.map(in_lane, batches))
    else:
        outputs = [forward_fitting(forward, seqs, idx, pad_id) for idx in batches]
    order = np.concatenate([np.asarray(idx) for idx in batches])
    probs = np.empty((len(seqs), num_labels), dtype=np.float32)
    probs[order] = torch.cat(outputs).cpu().numpy()
    return probs


def predict_probs(model: nn.Module, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int,
                  device: torch.device, autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """``run_batches`` through a torch model."""
    return run_batches(torch_forward(model, device, autocast_dtype), seqs, pad_id, batch_size,
                       model.config.num_labels)


def to_predictions(p: np.ndarray, labels: Sequence[str], truncated: Sequence[bool]) -> list[Prediction]:
    """Confidence, margin and entropy for all rows at once; one Prediction per row."""
    top2 = np.sort(p, axis=1)[:, ::-1][:, :2] if p.shape[1] > 1 else np.hstack([p, np.zeros_like(p)])
    best = p.argmax(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    margin = np.maximum(0.0, top2[:, 0] - top2[:, 1])
    return [
        Prediction(
            label=labels[b],
            probs=dict(zip(labels, row.tolist(), strict=True)),
            confidence=float(c),
            margin=float(m),
            entropy=max(0.0, float(e)),
            truncated=cut,
        )
        for row, b, c, m, e, cut in zip(p, best.tolist(), top2[:, 0], margin, entropy, truncated, strict=True)
    ]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX). Without it torch
    emulates bf16 and runs slower than fp32, so bf16 is worth trying only where this holds."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def mixed_precision(device: torch.device, wanted: str = "auto") -> torch.dtype | None:
    """The autocast dtype of training and evaluation passes. auto: bf16 where the hardware computes
    it (CUDA, AVX512-BF16/AMX CPUs: about 2x faster training steps on the 2-core machine here),
    else None (fp32). Weights and optimiser state stay fp32 either way."""
    if wanted == "fp32":
        return None
    if wanted == "bf16" or device.type == "cuda" or cpu_has_native_bf16():
        return torch.bfloat16
    return None


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_thread_count(num_threads: int | None) -> int:
    """``num_threads`` capped at the cores this process may run on (all of them when None): torch's
    own default can oversubscribe containers."""
    available = usable_cores()
    return max(1, min(num_threads or available, available))


def set_cpu_threads(num_threads: int | None) -> int:
    """Give torch ``cpu_thread_count(num_threads)`` threads; returns that count."""
    threads = cpu_thread_count(num_threads)
    torch.set_num_threads(threads)
    return threads


def cpu_lanes(num_threads: int) -> ThreadPoolExecutor | None:
    """``num_threads`` threads that each run whole forward passes with one torch thread, or None
    for one thread. Why not torch's own threads: they split every operation and meet at a barrier
    after it, so each step waits for the slowest, and in a worker the event loop, the Kafka client
    and ClickHouse keep preempting one of them. Passes side by side need no barrier. Measured on the
    2-core CPU: 1.3x the engine's msgs/s in `vigil bench scoring`, and 1.1-1.25x the msgs/s a
    worker sustains end to end (benchmarks/RESULTS.md)."""
    return ThreadPoolExecutor(num_threads, thread_name_prefix="vigil-lane") if num_threads > 1 else None


def auto_precisions(device: torch.device) -> tuple[Precision, ...]:
    """What ``precision="auto"`` tries, in order; the first that passes its parity check is used.
    CUDA: fp16. CPU with bf16 in hardware: bf16 (autocast keeps softmax and layer norm in fp32; 2-3x
    torch fp32 on MiniLM here, see benchmarks/RESULTS.md). Then, or on other CPUs: the fp32 graph on
    ONNX Runtime, which loses less than torch eager when other processes share the cores."""
    if device.type == "cuda":
        return ("fp16",)
    return ("bf16", "onnx") if cpu_has_native_bf16() else ("onnx",)


class Engine:
    """A ``Scorer`` over one registry version."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "auto",
        max_length: int = 128,
        batch_size: int = 16,
        precision: Precision = "auto",
        parity_texts: Sequence[str] = (),
        max_flip_rate: float = 0.002,
        num_threads: int | None = None,
        gpu_memory_fraction: float | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.card = ModelCard.model_validate_json((self.model_dir / "card.json").read_bytes())
        self.task = self.card.task
        self.model_name = self.card.model_name
        self.model_version = self.card.version
        self.device = pick_device(device)
        self.num_threads = cpu_thread_count(num_threads) if self.device.type == "cpu" else None
        self._lanes = cpu_lanes(self.num_threads) if self.num_threads else None
        if self.num_threads:
            torch.set_num_threads(1)  # each pass runs on one thread, the lanes side by side (process-wide)
        if self.device.type == "cuda" and gpu_memory_fraction is not None:
            # A cap on this process's caching allocator: N workers sharing one GPU cannot starve each other.
            torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction, self.device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = ModelTokenizer(self.model_dir)
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="vigil-tokenize")
        self.labels = config_labels(self.model_dir)
        if list(self.labels) != self.card.labels:
            raise ScoringError(f"{model_dir}: card labels and model labels differ; the version is corrupt")
        self._fp32: nn.Module | None = None
        self._forward: Forward | None = None
        self.precision = "fp32"
        self.parity: ParityReport | None = None
        if precision == "auto":
            self._enable_first(auto_precisions(self.device), parity_texts, max_flip_rate)
        elif precision != "fp32" and not self._enable(precision, parity_texts, max_flip_rate):
            log.warning("%s %s: keeping fp32", self.task, self.model_version)
        if self._forward is None:
            self._forward = self._torch_forward(self._model())

    def _model(self) -> nn.Module:
        """The torch fp32 model, loaded (and transformers imported) on first need: fp32 scoring, an
        export, a parity check or a torch precision; not a cached ONNX graph with its figures."""
        if self._fp32 is None:
            from transformers.utils import logging as hf_logging

            from models.modeling import MeanPoolClassifier

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            # Its labels are config.json's, which __init__ already checked against the card.
            self._fp32 = MeanPoolClassifier.from_pretrained(self.model_dir).eval().to(self.device)
        return self._fp32

    def _torch_forward(self, model: nn.Module, autocast_dtype: torch.dtype | None = None) -> Forward:
        """Traced on CPU, where the passes share the process with the worker's event loop; eager on
        CUDA, where tracing has not been measured, and for a model that does not trace."""
        if self.device.type == "cpu":
            try:
                return TracedForward(model, autocast_dtype)
            except ScoringError as e:
                log.warning("%s %s: scoring eagerly, holding the GIL between operators (%s)", self.task,
                            self.model_version, e)
        return torch_forward(model, self.device, autocast_dtype)

    @property
    def traced(self) -> bool:
        """Whether the passes run as a TorchScript trace (without the GIL)."""
        return isinstance(self._forward, TracedForward)

    def _candidate(self, precision: str, parity_texts: Sequence[str]) -> tuple[Forward, Path | None]:
        """The forward at ``precision``, and where its parity figures on ``parity_texts`` are kept (if anywhere)."""
        if precision == "int8":
            if self.device.type != "cpu":
                raise ScoringError("int8 dynamic quantization runs on CPU only; use fp16 or bf16 on CUDA")
            quantized = torch.ao.quantization.quantize_dynamic(self._model(), {nn.Linear}, dtype=torch.qint8)
            return self._torch_forward(quantized), self._torch_parity_record(precision, parity_texts)
        if precision == "fp16":
            if self.device.type != "cuda":
                raise ScoringError("fp16 inference needs CUDA; on CPU use bf16 (AVX512-BF16/AMX CPUs), onnx or fp32")
            return self._torch_forward(linears_in(self._model(), torch.float16), torch.float16), None
        if precision == "bf16":
            if self.device.type == "cpu" and not cpu_has_native_bf16():
                raise ScoringError("this CPU has no AVX512-BF16 or AMX, so bf16 would be emulated and slower "
                                   "than fp32; use onnx or fp32")
            record = self._torch_parity_record(precision, parity_texts) if self.device.type == "cpu" else None
            return self._torch_forward(linears_in(self._model(), torch.bfloat16), torch.bfloat16), record
        if precision in ("onnx", "onnx-int8"):
            if self.device.type != "cpu":
                raise ScoringError(f"{precision} runs on CPU (ONNX Runtime) only; use fp16 or bf16 on CUDA")
            try:
                path = onnx_backend.cached_export(self._model, self.model_dir, int8=precision == "onnx-int8")
                # One intra-op thread per session run, as for torch: the lanes run passes side by side.
                return (onnx_backend.onnx_forward(path, 1),
                        onnx_backend.onnx_parity_record(path, parity_texts, self.max_length))
            except onnx_backend.OnnxExportError as e:
                raise ScoringError(str(e)) from e
        raise ScoringError(f"unknown precision {precision!r}; use auto, fp32, onnx, onnx-int8, int8, fp16 or bf16")

    def _torch_parity_record(self, precision: str, parity_texts: Sequence[str]) -> Path:
        """Kept in the version's ``parity/`` folder, so a worker restart or hot swap skips the check."""
        beside = self.model_dir / "parity" / f"{precision}-{onnx_backend.weights_digest(self.model_dir)}"
        return onnx_backend.parity_record(beside, parity_texts, self.max_length,
                                          f"cpu {torch.backends.cpu.get_cpu_capability()}")

    def _enable_first(self, precisions: Sequence[Precision], parity_texts: Sequence[str], max_flip_rate: float) -> None:
        if not parity_texts:
            log.info("%s %s: no parity sample to check %s against, keeping fp32", self.task,
                     self.model_version, "/".join(precisions))
            return
        for wanted in precisions:
            try:
                if self._enable(wanted, parity_texts, max_flip_rate):
                    return
            except ScoringError as e:
                log.warning("%s %s: %s unavailable (%s)", self.task, self.model_version, wanted, e)
        log.warning("%s %s: keeping fp32", self.task, self.model_version)

    def _enable(self, precision: str, parity_texts: Sequence[str], max_flip_rate: float) -> bool:
        """Use ``precision`` if it passes the parity check against fp32; whether it did."""
        if not parity_texts:
            raise ScoringError(f"{precision} needs a parity sample of real texts to check it against fp32")
        candidate, record = self._candidate(precision, parity_texts)
        figures = onnx_backend.read_parity(record) if record else None
        if figures is None:
            enc = encode(self.tokenizer, parity_texts, self.max_length)
            pad, n_labels = self.tokenizer.pad_token_id, len(self.labels)
            ref = run_batches(torch_forward(self._model(), self.device), enc.ids, pad, self.batch_size, n_labels,
                              self._lanes)
            got = run_batches(candidate, enc.ids, pad, self.batch_size, n_labels, self._lanes)
            figures = {"n": len(enc.ids), "label_flips": int((ref.argmax(1) != got.argmax(1)).sum()),
                       "max_abs_prob_diff": float(np.abs(ref - got).max())}
            if record:
                onnx_backend.write_parity(record, figures)
        self.parity = ParityReport(precision=precision, max_flip_rate=max_flip_rate, **figures)
        if self.parity.accepted:
            self._forward, self.precision = candidate, precision
        else:
            log.warning("%s %s: %s flips %.3f%% of labels vs fp32 (limit %.3f%%); not using it",
                        self.task, self.model_version, precision, 100 * self.parity.flip_rate,
                        100 * max_flip_rate)
        return self.parity.accepted

    def probs(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Large calls go in chunks: the next chunk is tokenized on a thread (the Rust tokenizer
        releases the GIL) while the current one runs on the device."""
        chunks = [texts[i : i + _OVERLAP_CHUNK] for i in range(0, len(texts), _OVERLAP_CHUNK)]
        if not chunks:
            return np.empty((0, len(self.labels)), dtype=np.float32), []
        if self._lanes is not None and torch.get_num_threads() != 1:
            torch.set_num_threads(1)  # the count is process-wide: something else in the process set it
        parts: list[np.ndarray] = []
        truncated: list[bool] = []
        pending = self._tokenize_pool.submit(encode, self.tokenizer, chunks[0], self.max_length)
        for following in [*chunks[1:], None]:
            enc = pending.result()
            if following is not None:
                pending = self._tokenize_pool.submit(encode, self.tokenizer, following, self.max_length)
            parts.append(run_batches(self._forward, enc.ids, self.tokenizer.pad_token_id, self.batch_size,
                                     len(self.labels), self._lanes))
            truncated += enc.truncated
        return np.concatenate(parts), truncated

    def score(self, texts: Sequence[str]) -> list[Prediction]:
        p, truncated = self.probs(texts)
        if not np.isfinite(p).all():
            raise ScoringError(f"{self.task} {self.model_version} produced non-finite probabilities")
        return to_predictions(p, self.labels, truncated)


def parity_sample(settings: VigilSettings, task: str) -> list[str]:
    """Real texts for the reduced-precision check: settings.parity_sample of the task's held-out
    validation rows, spread over them."""
    n = settings.parity_sample
    spec = get_task(task)
    # Row by row, as before copies were grouped: the texts name the parity figures a version's folder
    # keeps, and other texts would have every version checked again at its next start.
    split = stratified_split(spec.load(settings.bundled_data_dir), SplitConfig(group_duplicates=False))
    return [r.text for r in split.val[:: max(1, len(split.val) // n)]][:n]


def load_scorer(settings: VigilSettings, task: str, version: str | None = None,
                parity_texts: Sequence[str] | None = None) -> Engine:
    """The scorer for ``task``: ``version``, else settings.sentiment_model / triage_model ('champion').

    Raises ``models.registry.ModelNotFound`` (message: run `vigil train --task TASK`) when the
    registry has no such model.
    """
    spec = get_task(task)
    wanted = version or {"sentiment": settings.sentiment_model, "triage": settings.triage_model}[spec.name]
    model_dir = ModelRegistry(settings.registry_dir).resolve(task, wanted)
    precision = settings.inference_precision
    needs_parity = precision != "fp32"
    if parity_texts is None and needs_parity:
        parity_texts = parity_sample(settings, task)
    return Engine(
        model_dir,
        device=settings.device,
        max_length=settings.max_length,
        batch_size=settings.score_batch_size_gpu if pick_device(settings.device).type == "cuda"
        else settings.score_batch_size,
        precision=precision,
        parity_texts=parity_texts or (),
        max_flip_rate=settings.parity_max_flip_rate,
        num_threads=settings.cpu_threads,
        gpu_memory_fraction=settings.gpu_memory_fraction,
    )
