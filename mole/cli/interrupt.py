"""Ctrl-C for commands that loop until interrupted (``--watch``, ``--follow``).

A process started with SIGINT ignored — a background job of a non-interactive shell, a test
runner's worker process — inherits that disposition, and Python then installs no
KeyboardInterrupt handler: a loop waiting for Ctrl-C would never end. A command whose whole
point is to run until Ctrl-C restores the default handler first.
"""

from __future__ import annotations

import signal
import threading


def let_ctrl_c_interrupt() -> None:
    """Make SIGINT raise KeyboardInterrupt in this process (signals are main-thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
