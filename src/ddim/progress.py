"""Progress bars with rate and ETA that stay readable when written to a log file.

On a terminal the bar redraws itself in place; written to a file (`nohup … > train.log`), every
redraw would be a new line, so the bar then redraws at most once a minute.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 60.0


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """`tqdm` with its refresh interval chosen by where stderr goes (terminal or file)."""
    stream = kwargs.get("file") or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    if not interactive:
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S * 10)
    return tqdm(iterable, **kwargs)
