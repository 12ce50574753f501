"""What `vigil up` and `vigil demo` need to supervise child processes: the signals that stop them
in order, and children that go when they go.

The embedded broker and the workers each run in a session of their own, so that Ctrl-C reaches the
supervisor alone, which stops them in order. A supervisor that dies without that stop (SIGKILL, the
OOM killer) left them running, re-parented to init: a worker orphaned like that kept the embedded
ClickHouse's lock and the labelling UI's port, and the next start on that data directory
restart-looped.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

_PR_SET_PDEATHSIG = 1
# Ctrl-C, a service manager's stop (or `timeout`), and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def on_stop_signals(handler: Callable[[int, FrameType | None], Any]) -> None:
    """Send the stop signals to ``handler``. One that is ignored stays ignored: under nohup, SIGHUP
    must not stop the run."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


def _die_with(libc: ctypes.CDLL, parent: int) -> None:
    # Runs in the child between fork and exec: prctl and getppid only (libc was loaded before the
    # fork: dlopen takes the loader's lock, which another thread may have held at the fork).
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl ran: no signal would come
        os._exit(1)


def die_with_parent() -> partial[None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM (so a faust worker stops
    cleanly) when the thread that started it exits; None where the kernel cannot do it.

    The kernel counts the starting *thread*, not the process: call Popen from the main thread, or
    one that lives as long as the child should (every caller in Vigil starts its children from
    the main thread)."""
    if not sys.platform.startswith("linux"):
        return None
    return partial(_die_with, ctypes.CDLL(None, use_errno=True), os.getpid())
