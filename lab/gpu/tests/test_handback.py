"""lab/gpu/handback.py: files split into parts join back, and a changed part is caught."""

import numpy as np
import pytest

from lab.gpu import handback


def test_files_split_into_parts_join_back_and_a_changed_part_is_caught(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 2500, dtype=np.uint8).tobytes()
    (tmp_path / "big.bin").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    entry = handback.split_file(tmp_path / "big.bin", out, "big.bin", part_bytes=1000)
    assert [p["file"] for p in entry["parts"]] == ["big.bin.00", "big.bin.01", "big.bin.02"]
    assert [p["bytes"] for p in entry["parts"]] == [1000, 1000, 500]
    handback.join_parts(out, entry, tmp_path / "joined.bin")
    assert (tmp_path / "joined.bin").read_bytes() == data
    (out / "big.bin.01").write_bytes(b"x" * 1000)
    with pytest.raises(ValueError, match="big.bin.01"):
        handback.join_parts(out, entry, tmp_path / "again.bin")
    with pytest.raises(ValueError, match="letters, digits"):
        handback.split_file(tmp_path / "big.bin", out, "bad name")
