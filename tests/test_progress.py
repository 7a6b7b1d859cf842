"""Progress bars: redrawn in place on a terminal, at most once a minute into a log file."""

import io

from ddim.progress import LOG_INTERVAL_S, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_few_redraws():
    log = io.StringIO()
    with progress_bar(total=10_000, file=log) as bar:
        for _ in range(10_000):
            bar.update(1)
    assert bar.mininterval == LOG_INTERVAL_S
    # the first and the final draw only, not one line per update
    assert log.getvalue().count("\r") <= 3


def test_a_terminal_keeps_tqdm_defaults():
    with progress_bar(total=3, file=Terminal()) as bar:
        assert bar.mininterval < 1
    with progress_bar(total=3, file=io.StringIO(), mininterval=0.5) as bar:
        assert bar.mininterval == 0.5  # an explicit choice wins
