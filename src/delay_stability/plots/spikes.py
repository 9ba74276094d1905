"""Figure 11 (tables from ``delay-stability spikes-collect``): training-error spikes under delay."""

from __future__ import annotations

import numpy as np

from .style import by_name, caption, new_figure, plotter

COLORS = {"momentum": "C3", "plain": "C1", "shifted": "C0"}
NAMES = {"momentum": "A-SGD with momentum", "plain": "A-SGD without momentum", "shifted": "A-SGD, shifted momentum"}


@plotter("fig11")
def plot_fig11(tables, scale=None, options=None):
    """Fig. 11: train error vs epochs, every seed, one panel per algorithm; spike counts in the titles."""
    runs = by_name(tables, "spikes", "mean_height")
    curves = by_name(tables, "epoch", "train_error")
    variants = list(dict.fromkeys(runs["variant"]))
    fig, axes = new_figure(ncols=len(variants), width=3.2 * len(variants), height=3.4)
    axes = np.atleast_1d(axes)
    for ax, v in zip(axes, variants):
        r = runs.where(variant=v)
        for seed in sorted(set(r["seed"])):
            c = curves.where(variant=v, seed=seed)
            order = np.argsort(c["epoch"])
            ax.plot(c["epoch"][order], 100 * c["train_error"][order], color=COLORS.get(v, "k"), lw=0.9,
                    alpha=0.85, label=f"seed {int(seed)}: {int(r.where(seed=seed)['spikes'][0])} spikes")
        counts = r["spikes"]
        heights = r["mean_height"][counts > 0]
        height = f", mean height {100 * np.mean(heights):.1f} pts" if len(heights) else ""
        ax.set(title=f"{NAMES.get(v, v)}\n{np.mean(counts):.2f} spikes per run{height}", xlabel="epoch",
               ylim=(0, 100))
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6, loc="upper right")
    axes[0].set_ylabel("train error (%)")
    o = options or {}
    return caption(fig, f"Fig. 11: train error (mean of each epoch's steps) of A-SGD with τ = {o.get('tau', '?')}, the same "
                        f"η = {o.get('lr', '?')} (dampened), m = {o.get('momentum', '?')} where used, no LR decay; "
                        f"{o.get('model', '?')} on {o.get('dataset', '?')}, batch {o.get('batch_size', '?')}, "
                        f"{o.get('epochs', '?')} epochs. A spike: train error above its running minimum by "
                        f"{100 * float(o.get('margin', 0.05)):g} points that comes back within half of that "
                        "(spikes.csv).", scale)
