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


def test_disabled_bars_skip_quietly(capsys):
    """A disabled bar (--no-progress) counts work found done and draws nothing, on stderr or in
    its own stream."""
    stream = io.StringIO()
    for bar in (progress_bar(total=5, disable=True), progress_bar(total=5, disable=True,
                                                                  file=stream)):  # fmt: skip
        bar.skip(3)
        bar.skip()
        assert bar.n == 4
        bar.close()
        assert bar.n == 4
    captured = capsys.readouterr()
    assert (captured.err, captured.out, stream.getvalue()) == ("", "", "")


# --- resumed commands count the earlier run's work apart -----------------------------------------


def clocked_bars(monkeypatch, module, clock) -> list:
    """Make `module.progress_bar` give bars on `clock`; return the list they are put in."""
    bars = []

    def clocked(*args, **kwargs):
        bar = progress_bar(*args, **kwargs)
        bar._time = clock
        bar.start_t = bar.last_print_t = clock()
        bars.append(bar)
        return bar

    monkeypatch.setattr(module, "progress_bar", clocked)
    return bars


def test_a_resumed_sample_run_rates_only_the_images_it_makes(tiny_checkpoint, tmp_path,
                                                             monkeypatch):  # fmt: skip
    """4 images made by a first run, then --n 10 at 1 s per batch of 2 on the clock: 2 img/s,
    not the 10/3 that counting the 4 found images as made would show."""
    import ddim.cli.sample
    import ddim.sampling.model

    clock = Clock()
    real = ddim.sampling.model.eps_model_for

    def timed(net, precision):
        eps_model = real(net, precision)
        return lambda x, t: (setattr(clock, "now", clock.now + 1), eps_model(x, t))[1]

    monkeypatch.setattr(ddim.sampling.model, "eps_model_for", timed)
    bars = clocked_bars(monkeypatch, ddim.cli.sample, clock)
    argv = ["sample", "--ckpt", str(tiny_checkpoint), "--steps", "1", "--batch", "2",
            "--device", "cpu", "-o", str(tmp_path / "s")]
    assert ddim.cli.main([*argv, "--n", "4"]) == 0 and ddim.cli.main([*argv, "--n", "10"]) == 0
    first, resumed = bars
    assert (first.n, first.initial) == (4, 0) and (resumed.n, resumed.initial) == (10, 4)
    rate, eta = rate_and_eta(resumed)
    assert rate == pytest.approx(2.0) and eta == 0


def test_a_resumed_table_rates_only_the_cells_it_scores(tiny_checkpoint, tmp_path, monkeypatch):
    """One column scored by a first run, then three columns at 10 s per cell on the clock:
    0.1 cells/s, the found cell in the count only."""
    import numpy as np

    import ddim.cli.table
    from ddim import evaluation

    clock = Clock()

    def scores(images, ref, **_):
        list(images)
        clock.now += 10
        return evaluation.Scores(1.0, None)

    monkeypatch.setattr(evaluation.scoring, "compute_scores", scores)
    stats = evaluation.FidStats(np.zeros(2), np.eye(2), 10, evaluation.network_sha256(),
                                evaluation.CONVENTION, "made by hand", 8)  # fmt: skip
    ref = evaluation.save_stats(stats, tmp_path / "ref.npz")
    bars = clocked_bars(monkeypatch, ddim.cli.table, clock)
    argv = ["table", "--ckpt", str(tiny_checkpoint), "--ref", str(ref), "--n", "2", "--etas",
            "0", "--device", "cpu", "-o", str(tmp_path / "t"), "--steps", "1"]  # fmt: skip
    with pytest.warns(UserWarning, match="KID unavailable"):
        assert ddim.cli.main(argv) == 0 and ddim.cli.main([*argv, "2", "3"]) == 0
    resumed = bars[-1]
    assert (resumed.n, resumed.initial, resumed.total) == (3, 1, 3)
    assert rate_and_eta(resumed)[0] == pytest.approx(0.1)


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
