"""Atomic writers: the old file survives a failed write; floats read back bit for bit."""

import csv
import json
import math

import numpy as np
import pytest

from delay_stability import files


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    files.write_json(path, {"x": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        files.atomic_write(path, boom)
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind


def test_json_has_no_nan_and_csv_round_trips(tmp_path):
    files.write_json(tmp_path / "r.json", {"a": math.nan, "b": [math.inf, 0.1]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [None, 0.1]}
    values = [0.1 + 0.2, np.float64(1 / 3), np.float32(0.1), 7, None, "plain"]
    files.write_csv(tmp_path / "t.csv", ["v"], [{"v": v} for v in values])
    with open(tmp_path / "t.csv", newline="") as fh:
        cells = [row["v"] for row in csv.DictReader(fh)]
    assert float(cells[0]) == 0.1 + 0.2 and float(cells[1]) == 1 / 3
    assert float(cells[2]) == float(np.float32(0.1))
    assert cells[3:] == ["7", "", "plain"]
