"""Shared set-up of the test suite.

- ``tests/`` is on ``sys.path`` (pytest's rootdir insertion), so test files import the shared
  references from ``oracles.py`` and the Snakemake helpers from ``workflow_util.py``.
- Torch runs on one thread in every test process: results are then bit-for-bit reproducible and
  two test processes do not fight over the two cores.
- ``run_cli`` runs ``delay-stability`` in-process and returns (exit status, stdout, stderr).
- The longest test files run first: the files' wall times measured by benchmarks/test_time.py
  (benchmarks/results/test_time.json) order the collection, longest first. `make test` runs
  ``pytest -n 2 --dist loadfile --no-loadscope-reorder``: each file stays on one worker and the files
  are handed out in this order (longest first is within 4/3 of the best schedule of whole files), so
  the longest file does not start last. Files not measured keep their order, after the measured ones.
"""

import json
from pathlib import Path

import pytest

TEST_TIMES = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "test_time.json"


def pytest_configure(config):
    try:
        import torch
    except ImportError:  # the theory tests need no torch
        return
    torch.set_num_threads(1)


def measured_seconds(path=TEST_TIMES):
    """test file (``tests/test_x.py``) -> its measured time in seconds (pytest's session time, else the
    wall time); {} without measurements."""
    try:
        files = json.loads(Path(path).read_text())["files"]
        return {name: float(record.get("session_s", record["wall_s"])) for name, record in files.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def pytest_collection_modifyitems(config, items):
    """Longest test files first (a stable sort: a file's tests keep their order and stay together)."""
    seconds = measured_seconds()
    if seconds:
        items.sort(key=lambda item: -seconds.get(item.nodeid.split("::", 1)[0], 0.0))


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv) -> (status, out, err)``: the package's CLI, in this process."""
    from delay_stability.cli import main

    def run(*argv):
        status = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run
