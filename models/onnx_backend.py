"""The ONNX Runtime forward for CPU scoring.

A registry version is exported once to ONNX (batch and sequence axes dynamic, softmax inside the
graph so it returns class probabilities) and cached in ``<version dir>/onnx/``, named by a digest of
the weights and the export recipe; later engines on that version load the cached file. An int8 variant
(onnxruntime's dynamic quantization of the MatMul weights) is derived from the fp32 graph and cached
beside it. The parity figures of a graph on a sample are kept beside it too: the same graph, texts,
cut and runtimes give the same figures, so a restarted worker reads them instead of scoring the sample
twice again. Files are written under a temporary name and renamed into place, so workers starting
together never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn


log = logging.getLogger(__name__)

# Part of every cached file's name: change either and old exports are no longer picked up.
EXPORT_FORMAT = 1
OPSET = 17
INPUTS = ("input_ids", "attention_mask")
_DIGESTED = ("config.json", "model.safetensors")


class OnnxExportError(RuntimeError):
    """The model could not be exported to, or loaded as, ONNX."""


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return torch.softmax(logits.float(), dim=-1)


def weights_digest(model_dir: Path) -> str:
    h = hashlib.sha256(f"format{EXPORT_FORMAT}-opset{OPSET}".encode())
    for name in _DIGESTED:
        with (Path(model_dir) / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _write_atomic(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from workers running as other users
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _export(model: nn.Module, path: Path) -> None:
    # Example rows of different lengths, so the traced graph carries a real padding mask.
    ids = torch.full((2, 8), model.config.pad_token_id or 0, dtype=torch.long)
    ids[:, 0], ids[0, 1:7], ids[1, 1:3] = 101, 2000, 2000
    mask = (torch.arange(8) < torch.tensor([[8], [4]])).long()
    wrapper = _Probabilities(model).eval()
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "probs": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python branch on a shape; the graph is checked by the parity test.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (ids, mask), str(path), dynamo=False, opset_version=OPSET,
            input_names=list(INPUTS), output_names=["probs"],
            dynamic_axes=dynamic,
        )


def _quantize(fp32_path: Path, path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(fp32_path, path, weight_type=QuantType.QInt8)


def cached_export(load_model: Callable[[], nn.Module], model_dir: Path, *, int8: bool = False) -> Path:
    """The ONNX file for the weights in ``model_dir``, exported now (from the torch model that
    ``load_model`` loads from them) only if no cached one exists."""
    cache = Path(model_dir) / "onnx"
    digest = weights_digest(model_dir)
    fp32_path = cache / f"model-{digest}.onnx"
    try:
        if not fp32_path.is_file():
            t0 = time.perf_counter()
            model = load_model()
            _write_atomic(fp32_path, lambda tmp: _export(model, tmp))
            log.info("exported %s to ONNX in %.1fs: %s", model_dir, time.perf_counter() - t0, fp32_path)
        if not int8:
            return fp32_path
        int8_path = cache / f"model-{digest}-int8.onnx"
        if not int8_path.is_file():
            _write_atomic(int8_path, lambda tmp: _quantize(fp32_path, tmp))
            log.info("quantized %s to int8: %s", fp32_path, int8_path)
        return int8_path
    except OSError as e:
        raise OnnxExportError(f"cannot write the ONNX export to {cache}: {e}; make the registry writable "
                              f"or set VIGIL_INFERENCE_PRECISION=fp32") from e
    except Exception as e:
        raise OnnxExportError(f"exporting {model_dir} to ONNX failed: {e}; set VIGIL_INFERENCE_PRECISION=fp32") from e


def parity_record(beside: Path, texts: Sequence[str], max_length: int, runtime: str) -> Path:
    """Where the parity figures against torch fp32 on ``texts`` are kept for the forward that
    ``beside`` names (an ONNX file, or a precision and weights digest): any change of sample, length
    or ``runtime`` (versions, hardware) means checking again."""
    h = hashlib.sha256(f"{max_length}|torch {torch.__version__}|{runtime}".encode())
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return beside.with_name(f"{beside.name.removesuffix('.onnx')}.parity-{h.hexdigest()[:16]}.json")


def onnx_parity_record(onnx_path: Path, texts: Sequence[str], max_length: int) -> Path:
    import onnxruntime as ort

    return parity_record(onnx_path, texts, max_length, f"onnxruntime {ort.__version__}")


def read_parity(path: Path) -> dict | None:
    try:
        figures = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return figures if isinstance(figures, dict) and set(figures) == {"n", "label_flips", "max_abs_prob_diff"} else None


def write_parity(path: Path, figures: dict) -> None:
    try:
        _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(figures), encoding="utf-8"))
    except OSError as e:  # only a cache: the next start checks again
        log.warning("cannot keep the parity figures in %s: %s", path, e)


def onnx_forward(path: Path, num_threads: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A forward over an ONNX Runtime session: (padded ids, mask) -> probabilities, all on CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads sleep instead of spinning: the cores are shared with the tokenizer thread,
    # the event loop and other workers, and on the shared 2-core machine spinning made scoring about
    # half as fast (benchmarks/RESULTS.md, "Scoring, CPU").
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxExportError(f"onnxruntime cannot load {path}: {e}; delete it to re-export") from e

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        (probs,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy().astype(np.int64)})
        return torch.from_numpy(probs)

    return forward
