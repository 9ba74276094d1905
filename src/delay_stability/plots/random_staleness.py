"""The random-staleness figure (tables from ``delay-stability random-staleness-collect`` and
``random-staleness-rescore``)."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .style import by_name, caption, new_figure, plotter

CRITERIA = (("alpha_mean_edge", "mean (eq. 19)", "C0", "v"),
            ("alpha_mean_square_edge", "mean-square", "C2", "s"),
            ("alpha_almost_sure_edge", "almost-sure", "C3", "D"))


@plotter("random_staleness")
def plot_random_staleness(tables, scale=None, options=None):
    """Left: per staleness model, the measured α = a·η at the edge (mean over seeds, bar: min to max,
    thick: 95% t-interval) beside each criterion's α*. Right (with scores.csv): the fraction of the
    real-workers continuations each predictor calls right."""
    summary = by_name(tables, "model", "alpha_mean_square_edge", "alpha_almost_sure_edge")
    if summary.n_rows == 0:
        raise UserError("random_staleness: summary.csv has no rows")
    scores = next((t for t in tables if "predictor" in t and "fraction" in t), None)
    fig, axes = new_figure(ncols=2 if scores is not None else 1, width=11.0 if scores is not None else 7.0,
                           height=4.2)
    ax = axes[0] if scores is not None else axes
    labels = list(summary["model"])
    x = np.arange(len(labels))
    measured = summary["measured"] == "True"
    for col, name, color, marker in CRITERIA:
        ax.plot(x, summary[col], ls="none", marker=marker, color=color, mfc="none", ms=7, label=name)
    if measured.any():
        xm = x[measured]
        mean = summary["alpha_mean"][measured]
        ax.vlines(xm, summary["alpha_min"][measured], summary["alpha_max"][measured], color="k", lw=0.8)
        ax.vlines(xm, summary["ci_low"][measured], summary["ci_high"][measured], color="k", lw=3, alpha=0.5)
        ax.plot(xm, mean, "ko", ms=5, label="measured (seeds: mean, 95% CI, range)")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
    ax.set(yscale="log", ylabel=r"$\alpha = a\,\eta$ at the edge")
    top = np.nanmax([np.nanmax(summary[col]) for col, *_ in CRITERIA])
    ax.set_ylim(top=top * 30)  # room for the legend above the points
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    text = ("Random staleness at fig. 2's minimum: the largest stable a·η measured with DelayedSGD under "
            "each staleness model (black; one search per seed) beside the mean edge (eq. 19, ρ(E[A])), the "
            "mean-square edge (ρ(E[A⊗A])) and the almost-sure edge (top Lyapunov exponent, Monte Carlo).")
    if scores is not None:
        ax_s = axes[1]
        order = np.argsort(scores["fraction"])
        names = scores["predictor"][order]
        ax_s.barh(np.arange(len(names)), scores["fraction"][order], color="0.6")
        ax_s.set_yticks(np.arange(len(names)))
        ax_s.set_yticklabels(names, fontsize=7)
        ax_s.set(xlim=(0, 1), xlabel="fraction of real-worker continuations called right")
        text += (" Right: the real-workers continuations (stay/leave) called by each predictor's edge, from the "
                 "measured staleness histogram (i.i.d. model), the worker count (uniform workers), round robin "
                 "and the logged delay sequence.")
    return caption(fig, text, scale)
