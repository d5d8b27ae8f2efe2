"""One timestamped line on stderr per finished unit of work, for runs without a progress bar.

Background runs (``--no-progress``, ``nohup``) still need to say where they are; training,
distillation and reproduction all report through :func:`status_line` so their logs read alike.
"""
from __future__ import annotations

import sys
import time

__all__ = ["status_line"]


def status_line(*parts: str) -> None:
    """Print ``HH:MM:SS | part | part ...`` to stderr and flush at once (logs are tailed live)."""
    print(" | ".join([time.strftime("%H:%M:%S"), *parts]), file=sys.stderr, flush=True)
