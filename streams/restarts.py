"""When a supervisor restarts a worker that died: soon after a long run, later and later after
quick deaths. A worker that cannot start (a pinned broken model, a wrong password) would otherwise
restart every few seconds, loading its models each time and filling its log."""

from __future__ import annotations

import json
from dataclasses import dataclass

# What `vigil worker` logs, critical, before it exits on an error a restart alone may not fix.
CANNOT_START = "worker cannot start: "
# What a running worker logs, critical, as it stops itself (a failed batch, a stalled consumer).
STOPPING = "stopping the worker: "

# A streak of quick deaths can last days (a deployment broken overnight), and 2 ** a thousand of them
# is too large for a float: the supervisor died of it, stopping every worker. 2 ** 64 times any
# sensible first wait is past any cap.
_MAX_DOUBLINGS = 64


@dataclass
class RestartBackoff:
    first_s: float = 1.0
    max_s: float = 60.0
    healthy_after_s: float = 120.0  # a run this long ends the streak of quick deaths
    _quick_deaths: int = 0

    def delay(self, ran_for_s: float) -> float:
        """Seconds to wait before restarting a worker that died after running ``ran_for_s``."""
        self._quick_deaths = 1 if ran_for_s >= self.healthy_after_s else self._quick_deaths + 1
        return min(self.first_s * 2 ** min(self._quick_deaths - 1, _MAX_DOUBLINGS), self.max_s)


def last_words(log_text: str) -> str | None:
    """Why a worker that died said it could not start or stopped itself, from what it logged in this
    run (text or JSON lines); None when it did not say (killed, crashed)."""
    for line in reversed(log_text.splitlines()):
        marker = next((m for m in (CANNOT_START, STOPPING) if m in line), None)
        if marker is None:
            continue
        if line.startswith("{"):
            try:
                line = str(json.loads(line).get("message", line))
            except ValueError:
                pass
        return line[line.find(marker) + len(marker):].strip() or None
    return None
