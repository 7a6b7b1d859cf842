"""Library errors speak of arguments, the command line of flags: a DdimError raised outside
ddim/cli names no flag, and one about an argument reaches the user with the flag in its place."""

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ddim"
FLAG = re.compile(r"(^|[\s'(`])--[a-z]")
# Messages that still name a flag: the training stage's (`ddim train` drives `train()`); those
# that name the argument and then the flag "on the command line" (checkpoint/, data/); and those
# that quote a whole command (evaluation/stats_file.py's `ddim fid ref`, files/outputs.py's
# `ddim <command>`).
STILL_NAMING_FLAGS = {
    "training/loop.py", "training/run_dir.py", "training/resume.py", "checkpoint/load.py",
    "checkpoint/weights.py",
    "data/datasets.py", "evaluation/stats_file.py", "files/outputs.py",
}


def error_texts(path: Path) -> list[str]:
    """The literal text of every DdimError(...) message in a file."""
    texts = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DdimError":
            for part in ast.walk(node.args[0]) if node.args else ():
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    texts.append(part.value)
    return texts


def test_library_errors_name_no_flags():
    naming = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "cli" not in path.relative_to(SRC).parts
        and any(FLAG.search(text) for text in error_texts(path))
    }
    assert naming <= STILL_NAMING_FLAGS, naming - STILL_NAMING_FLAGS
    assert any(FLAG.search(t) for t in error_texts(SRC / "cli" / "interpolate.py"))  # it sees


def test_a_device_error_names_the_argument_and_the_flag(capsys):
    import pytest

    from ddim.cli import main
    from ddim.device import parse_device
    from ddim.errors import DdimError

    with pytest.raises(DdimError, match="^device 'gpu7' is not a device") as error:
        parse_device("gpu7")
    assert error.value.argument == "device"
    assert main(["sample", "--device", "gpu7"]) == 2
    assert "ddim sample: error: --device 'gpu7' is not a device" in capsys.readouterr().err
