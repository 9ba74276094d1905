"""Shared set-up of the test suite.

- ``tests/`` is on ``sys.path`` (pytest's rootdir insertion), so test files import the shared
  references from ``oracles.py`` and the Snakemake helpers from ``workflow_util.py``.
- Torch runs on one thread in every test process: results are then bit-for-bit reproducible and
  two test processes do not fight over the two cores.
- ``run_cli`` runs ``delay-stability`` in-process and returns (exit status, stdout, stderr).
"""

import pytest


def pytest_configure(config):
    try:
        import torch
    except ImportError:  # the theory tests need no torch
        return
    torch.set_num_threads(1)


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv) -> (status, out, err)``: the package's CLI, in this process."""
    from delay_stability.cli import main

    def run(*argv):
        status = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run
