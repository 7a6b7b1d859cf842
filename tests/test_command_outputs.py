"""Every output of every command that writes from a checkpoint, and of the README's Python API, is
the golden one in tests/data/ on any x86 CPU: records exactly, images within one uint8 level,
floats within the measured tolerances (`tests/command_outputs.py` says what is kept, how it is
compared and how to record it)."""

import copy

import numpy as np
import pytest
from command_outputs import (
    RUNS,
    Outputs,
    collect_outputs,
    compare_outputs,
    digests,
    load_golden,
)

# The commands that write outputs from a checkpoint: each has a run in RUNS.
WRITERS = {"sample", "encode", "reconstruct", "interpolate", "trajectory", "table", "convert"}

# run -> (a run whose arrays it makes bit for bit on any machine, why)
SAME_ARRAYS = {
    "sample-ddpm-default": (
        "sample-ddpm-large",
        "--sampler ddpm's variance follows model.var_type: the tiny config's fixedlarge is the "
        "large variance σ̂, as in the official code",
    ),
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Outputs:
    return collect_outputs(tmp_path_factory.mktemp("outputs"))


def test_every_output_is_the_golden_one(outputs):
    problems = compare_outputs(outputs, load_golden())
    assert not problems, "\n".join(problems)


def test_runs_that_share_a_computation_make_the_same_arrays(outputs):
    for run, (like, _) in SAME_ARRAYS.items():
        ours = {k[len(run):]: a for k, a in outputs.arrays.items() if k.startswith(f"{run}/")}
        theirs = {k[len(like):]: a for k, a in outputs.arrays.items() if k.startswith(f"{like}/")}
        assert ours and ours.keys() == theirs.keys(), run
        assert all(np.array_equal(ours[k], theirs[k]) for k in ours), run


def test_every_command_that_writes_from_a_checkpoint_has_a_seeded_run():
    commands = {argv[0] for argvs in RUNS.values() for argv in argvs}
    assert WRITERS <= commands, WRITERS - commands
    assert any("--seed" in argv or "--seeds" in argv for argvs in RUNS.values() for argv in argvs)


def test_a_change_beyond_the_tolerances_is_reported():
    """The comparison itself: each kind of output, moved past its tolerance, is named."""
    golden = load_golden()
    changed = copy.deepcopy(golden)
    image, latents = "sample-ddim/samples.npz:arr_0", "encode/latents.npz:latents"
    changed.arrays[image] = golden.arrays[image].copy()
    changed.arrays[image][0, 0, 0, 0] ^= 2  # two levels: more than rounding
    flips = "sample-quad-eta/samples.npz:arr_0"
    changed.arrays[flips] = np.where(golden.arrays[flips] < 255, golden.arrays[flips] + 1, 254)
    changed.arrays[latents] = golden.arrays[latents] * np.float32(1.01)
    changed.arrays["table/table.json:measured"] = golden.arrays["table/table.json:measured"] + 1
    changed.records["trajectory/traj.json"]["eta"] = 1.0
    del changed.arrays["api/slerp"]
    found = {line.split(": ")[0] for line in compare_outputs(changed, golden)}
    assert found == {image, flips, latents, "table/table.json:measured", "trajectory/traj.json",
                     "api/slerp"}  # fmt: skip
    assert compare_outputs(golden, golden) == []
    moved = digests(changed).items() - digests(golden).items()
    assert {key for key, _ in moved} == found - {"api/slerp"}
