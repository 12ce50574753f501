"""Rules reload without restart: watch the rules file's modification stamp and hand back a new,
validated ``AlertRules`` when it changes. A file that fails validation is refused (the error is
returned, once per change) and whatever rules the caller holds stay in force."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from streams.alerting.rules import AlertRules, RulesError


@dataclass(frozen=True, slots=True)
class Reloaded:
    rules: AlertRules | None  # None when the new file was refused
    error: RulesError | None = None


class RulesWatcher:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        # Size too: an editor can rewrite a file within one mtime tick.
        return st.st_mtime_ns, st.st_size

    def poll(self) -> Reloaded | None:
        """None while the file is unchanged; otherwise the new rules or the reason they were refused.
        A refused file is not retried until it changes again."""
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            return Reloaded(AlertRules.from_file(self.path))
        except RulesError as e:
            return Reloaded(None, e)
