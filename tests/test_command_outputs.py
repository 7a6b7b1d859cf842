"""Every output of every sampling-side command, and the README's Python API, gives the digests
recorded in tests/data/command_outputs.json (`tests/command_outputs.py` says what a digest sees
and how to record them): byte for byte the same images, latents and records on the CPU for the
same seeds, except where `CHANGED` names a change made on purpose."""

import json
from pathlib import Path

import pytest
from command_outputs import record_outputs

RECORDED = Path(__file__).parent / "data" / "command_outputs.json"

# run -> (the recorded run whose outputs it now has, why)
CHANGED: dict[str, tuple[str, str]] = {
    "sample-ddpm-default": (
        "sample-ddpm-large",
        "--sampler ddpm's variance follows model.var_type: the tiny config's fixedlarge is the "
        "large variance σ̂, as in the official code (it was the small one whatever the config)",
    ),
}


def expected_outputs(recorded: dict) -> dict[str, str]:
    """The recorded digests with each changed run's outputs replaced by those it now equals."""
    expected = dict(recorded)
    for run, (like, _) in CHANGED.items():
        for key in recorded:
            if key.startswith(f"{run}/"):
                expected[key] = recorded[f"{like}/{key[len(run) + 1:]}"]
    return expected


def test_every_output_is_the_recorded_one(tmp_path):
    recorded = json.loads(RECORDED.read_text())
    now = record_outputs(tmp_path.resolve())
    if now["fingerprint"] != recorded["fingerprint"]:
        pytest.skip("this machine's float32 arithmetic differs from the recording machine's")
    expected = expected_outputs(recorded["outputs"])
    assert sorted(now["outputs"]) == sorted(expected)
    differ = [key for key in expected if now["outputs"][key] != expected[key]]
    assert not differ, differ


def test_each_named_change_changed_something():
    recorded = json.loads(RECORDED.read_text())["outputs"]
    for run, (like, _) in CHANGED.items():
        assert recorded[f"{run}/samples.npz"] != recorded[f"{like}/samples.npz"], run
