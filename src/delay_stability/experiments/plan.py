"""Plan code that several experiments share: how a grid's runs group into ensemble jobs.

Only plans and tables import this module (generalization, momentum_tables); no compute module does
(tests/test_layout.py checks it), so an edit here reruns tables, never a training job.
"""

from __future__ import annotations



def groups_by(runs: list, axis: str) -> dict:
    """value of ``axis`` -> the GridRuns with that value, in order (one ensemble job each)."""
    out = {}
    for run in runs:
        out.setdefault(run.axes[axis], []).append(run)
    return out


def ensemble_groups_by(runs: list, axis: str) -> dict:
    """The groups of ``groups_by`` that train as one ensemble (``spec.can_ensemble``); the runs of
    the other groups train one by one (the generic ``train`` rule)."""
    from ..spec import can_ensemble

    return {value: g for value, g in groups_by(runs, axis).items() if can_ensemble([r.spec for r in g])[0]}

