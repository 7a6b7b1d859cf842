"""Progress and errors that tell the truth: rates and ETAs count only this run's work, and an
error is the last line on stderr, after every progress bar is closed.
docs/reliability.md lists the classes and their guarantees."""

from __future__ import annotations

import io
import sys
import warnings

import pytest

import ddim.cli
from ddim.errors import DdimError
from ddim.progress import ProgressBar, progress_bar


class Clock:
    """A clock the test moves by hand, for a bar's timing (no test waits for real time)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def clocked_bar(clock, **kwargs) -> ProgressBar:
    """A bar on `clock`, drawn into a string, redrawn at every update."""
    bar = progress_bar(file=io.StringIO(), mininterval=0, miniters=1, **kwargs)
    bar._time = clock
    bar.start_t = bar.last_print_t = clock()
    return bar


def rate_and_eta(bar) -> tuple[float, float]:
    """(items/s, seconds left) as the bar would print them."""
    d = bar.format_dict
    rate = d["rate"] if d["rate"] else (d["n"] - d["initial"]) / d["elapsed"]
    return rate, (d["total"] - d["n"]) / rate


@pytest.mark.parametrize("smoothing", [0.0, 0.3, 1.0])
def test_work_found_done_is_not_in_the_rate_or_the_eta(smoothing):
    """A resumed run: 90 of 100 items done before it, then 1 item per 10 s."""
    clock = Clock()
    with clocked_bar(clock, total=100, smoothing=smoothing) as bar:
        bar.skip(90)
        for _ in range(2):
            clock.now += 10
            bar.update(1)
        rate, eta = rate_and_eta(bar)
        assert bar.n == 92 and rate == pytest.approx(0.1) and eta == pytest.approx(80)
        assert "92/100" in bar.fp.getvalue()


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_a_bar_started_at_initial_counts_from_there(smoothing):
    clock = Clock()
    with clocked_bar(clock, total=1000, initial=400, smoothing=smoothing) as bar:
        for _ in range(3):
            clock.now += 2
            bar.update(1)
        rate, eta = rate_and_eta(bar)
        assert rate == pytest.approx(0.5) and eta == pytest.approx(597 / 0.5)


def test_counting_found_work_as_an_update_would_have_lied():
    """The mechanism's reason: `update` of reused work multiplies the rate (24 img/s for 6)."""
    clock = Clock()
    with clocked_bar(clock, total=100, smoothing=0.0) as bar:
        clock.now += 10
        bar.update(91)  # 90 found done + 1 made
        assert rate_and_eta(bar)[0] == pytest.approx(9.1)  # not 0.1


def test_skip_mid_run_keeps_the_rate_of_this_run(monkeypatch):
    clock = Clock()
    with clocked_bar(clock, total=50, smoothing=0.0) as bar:
        clock.now += 4
        bar.update(2)
        bar.skip(30)  # shards found on the way
        clock.now += 4
        bar.update(2)
        assert bar.n == 34 and rate_and_eta(bar)[0] == pytest.approx(0.5)


def test_disabled_bars_skip_quietly():
    bar = progress_bar(total=5, disable=True)
    bar.skip(3)
    bar.close()


# --- the error line is the last line, after the bars ---------------------------------------------


def _command_that(monkeypatch, command, effect):
    build = ddim.cli.build_parser

    def parser():
        p = build()
        subparsers = next(a for a in p._actions if a.dest == "command")
        subparsers.choices[command].set_defaults(_run=effect)
        return p

    monkeypatch.setattr(ddim.cli, "build_parser", parser)


@pytest.mark.parametrize("error", [DdimError("the loss became non-finite"),
                                   MemoryError(), KeyboardInterrupt()])  # fmt: skip
def test_an_error_is_the_last_line_after_an_open_bar(error, monkeypatch, capsys):
    """Training keeps its bar open while it runs: an error must not be glued to it."""
    bars = []

    def train(args):
        bars.append(progress_bar(total=100, unit="step"))
        bars.append(progress_bar(total=10, unit="img", leave=False))
        bars[0].update(37)
        raise error

    _command_that(monkeypatch, "train", train)
    capsys.readouterr()
    code = ddim.cli.main(["train"])
    err = capsys.readouterr().err
    assert code == (130 if isinstance(error, KeyboardInterrupt) else 2)
    last = err.splitlines()[-1]
    assert last.startswith("ddim train: ") and ("error: " in last or "interrupted" in last)
    assert err.endswith("\n") and "37/100" in err.split(last)[0]
    assert err.split(last)[0].endswith("\n")  # the error starts a line of its own
    assert all(bar.disable for bar in bars)  # closed


def test_warnings_are_one_line_notes(monkeypatch, capsys):
    """The format the command line gives warnings (tests record warnings instead of printing
    them; `test_faults_records.py::test_the_command_line_says_it_in_one_line` runs a process)."""

    def sample(args):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda *w: sys.stderr.write(warnings.formatwarning(*w[:4]))
            warnings.warn("a note\nover two lines", stacklevel=1)
        return 0

    _command_that(monkeypatch, "sample", sample)
    capsys.readouterr()
    assert ddim.cli.main(["sample"]) == 0
    assert capsys.readouterr().err == "ddim sample: warning: a note over two lines\n"
    assert warnings.formatwarning is warnings._formatwarning_orig  # restored after the command
