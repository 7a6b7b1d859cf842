"""Progress bars with rate and ETA that count only this run's work and stay readable in a log.

On a terminal the bar redraws itself in place; written to a file (`nohup … > train.log`), every
redraw would be a new line, so the bar then redraws at most once a minute.

A resumed command has work that an earlier run did (shards, table cells, training steps). It is
shown in the count but kept out of the rate and the ETA: start the bar at `initial=done`, or call
`ProgressBar.skip(k)` for work found done on the way; `update(k)` is for work done in this run.
(tqdm's rate is (n − initial) / elapsed, and its smoothed rate averages the updates' sizes, so
an `update` of reused work would multiply the rate and shorten the ETA.)
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 60.0


class ProgressBar(tqdm):
    """A tqdm bar that can count work an earlier run did without counting it as this run's."""

    def skip(self, k: int = 1) -> None:
        """Count `k` items done before this run: shown in the count, not in the rate or ETA."""
        self.n += k
        if self.disable:  # a disabled bar keeps only its count
            return
        self.initial += k
        self.last_print_n += k
        self.refresh()


def progress_bar(iterable=None, **kwargs) -> ProgressBar:
    """A `ProgressBar` with its refresh interval chosen by where stderr goes (terminal or file)."""
    stream = kwargs.get("file") or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    if not interactive:
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S * 10)
    return ProgressBar(iterable, **kwargs)


def close_all() -> None:
    """Close every open bar (each draws its last state and ends its line), so that what is
    printed next, an error, starts on a line of its own and is the last line."""
    for bar in sorted(tqdm._instances, key=lambda b: -abs(getattr(b, "pos", 0))):
        bar.close()  # the innermost first, so each outer one ends below it
