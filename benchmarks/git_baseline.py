"""A module as it was at another git revision, loaded beside the current one (same process), so a
benchmark can run the old code on the same input in the same run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType


def module_at(rev: str, path: str, scratch: Path) -> ModuleType:
    """``path`` (e.g. ``streams/pii.py``) at ``rev``, as a module named ``<stem>_baseline``."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True)
    name = f"{Path(path).stem}_baseline"
    file = scratch / f"{name}.py"
    file.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
