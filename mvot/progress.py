"""Progress bars (tqdm) for the long commands: a terminal redraws often; a log file (a sweep
trial's ``log.txt``, CI) gets a line at most every ``LOG_INTERVAL`` seconds."""

from __future__ import annotations

import sys

LOG_INTERVAL = 30.0  # seconds between lines when stderr is not a terminal


def progress_bar(total: int, desc: str, unit: str, tty_interval: float, **kwargs):
    """A tqdm bar on stderr that redraws at most every ``tty_interval`` s on a terminal and
    every ``LOG_INTERVAL`` s otherwise."""
    from tqdm import tqdm

    interval = tty_interval if sys.stderr.isatty() else LOG_INTERVAL
    # tqdm's monitor thread forces a redraw once a bar has not drawn for ``maxinterval``
    # (10 s by default), which would halve the log file's interval: never before ``interval``.
    return tqdm(total=total, desc=desc, unit=unit, mininterval=interval, maxinterval=max(10.0, interval), **kwargs)
