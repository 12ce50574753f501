"""PII masking's cost on its worst shape: a support text of single-digit groups ("1 1 1 …").

The card search once tried every run of groups from every start (cubic); ``--baseline REV`` loads
``streams/pii.py`` as it was at git revision REV and times it beside the current one, same process.

    python -m benchmarks.pii_digit_groups [--groups 200 400 800 4000] [--baseline 46c1ecf]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.git_baseline import module_at
from streams.pii import mask_pii

BASELINE_TOO_SLOW = 1_000  # groups: the cubic search would take minutes


def _seconds(mask: Callable[[str], Any], text: str) -> float:
    started = time.perf_counter()
    mask(text)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[200, 400, 800, 4000])
    parser.add_argument("--baseline", help="a git revision whose streams/pii.py is timed too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        baseline = module_at(args.baseline, "streams/pii.py", Path(scratch)).mask_pii if args.baseline else None
        for n in args.groups:
            text = " ".join(["1"] * n)
            line = f"{n:>6} groups ({len(text):,} chars): current {_seconds(mask_pii, text):.4f} s"
            if baseline is not None and n < BASELINE_TOO_SLOW:
                line += f", {args.baseline} {_seconds(baseline, text):.3f} s"
            print(line)


if __name__ == "__main__":
    main()
