"""Figure of the real-workers experiment (tables from ``delay-stability real-workers-collect``):
real_staleness."""

from __future__ import annotations

import numpy as np

from .style import by_name, caption, new_figure, plotter


@plotter("real_staleness")
def plot_real_staleness(tables, scale=None, options=None):
    """Left: measured staleness histograms per (M, jitter) with the geometric law and round robin.
    Right: the fraction of continuations that stayed at factor × the predicted edge (eq. 19)."""
    o = options or {}
    outcomes = by_name(tables, "outcome", "factor", "repeat")
    hist = by_name(tables, "measured", "geometric", "round_robin")
    sets = by_name(tables, "tv_geometric", "alpha_star")
    keys = sorted({(int(m), float(j)) for m, j in zip(sets["workers"], sets["jitter"])})
    ms = sorted({m for m, _ in keys})
    fig, axes = new_figure(ncols=len(ms) + 1, height=3.9)
    axes = np.atleast_1d(axes)
    ax_r = axes[-1]
    for ax, m in zip(axes, ms):
        jit = [j for mm, j in keys if mm == m]
        width = 0.8 / len(jit)
        for i, j in enumerate(jit):
            h = hist.where(workers=m, jitter=j)
            s = sets.where(workers=m, jitter=j)
            k = np.asarray(h["staleness"], dtype=float)
            color = f"C{keys.index((m, j))}"
            ax.bar(k - 0.4 + (i + 0.5) * width, h["measured"], width=width, color=color, alpha=0.8,
                   label=f"jitter {1000 * j:g} ms: E[τ] = {float(s['mean_staleness'][0]):.2f}, "
                         f"TV to geom. {float(s['tv_geometric'][0]):.2f}, to r.r. {float(s['tv_round_robin'][0]):.2f}")
        h = hist.where(workers=m, jitter=jit[0])
        k = np.asarray(h["staleness"], dtype=float)
        ax.plot(k, h["geometric"], "o--", color="k", ms=3, lw=0.8, label=r"geometric $(1/M)(1-1/M)^k$")
        ax.plot([m - 1], [1.0], "k*", ms=9, mfc="none", label=r"round robin $\tau = M-1$")
        ax.set(xlabel=r"measured staleness $\tau$", ylabel="fraction of updates", yscale="log",
               ylim=(1e-3, 3), title=f"M = {m} workers")
        ax.legend(fontsize=6, loc="upper right")
    factors = sorted(set(outcomes["factor"]))
    for i, (m, j) in enumerate(keys):
        t = outcomes.where(workers=m, jitter=j)
        stayed = [float(np.mean(t.where(factor=f)["outcome"] == "stayed")) if t.where(factor=f).n_rows else np.nan
                  for f in factors]
        n = t.where(factor=factors[0]).n_rows if factors else 0
        ax_r.plot(np.asarray(factors) + 0.02 * (i - (len(keys) - 1) / 2), stayed, "o-", color=f"C{i}", ms=5, alpha=0.85,
                  label=f"M = {m}, jitter {1000 * j:g} ms ({n} repeats)")
    for i, (m, j) in enumerate(keys):  # the edge of the pilot's logged sequence, in the same units
        s = sets.where(workers=m, jitter=j)
        ax_r.axvline(float(s["alpha_star_sequence"][0]) / float(s["alpha_star"][0]), color=f"C{i}", ls="--", lw=0.9)
    ax_r.plot([], [], "--", color="0.4", lw=0.9, label="edge of the logged sequence")
    ax_r.axvline(1.0, color="k", ls=":", lw=1, label="predicted edge (eq. 19)")
    ax_r.fill_between([0, 1], -0.05, 1.05, color="C2", alpha=0.08, lw=0)
    ax_r.set(xlabel=r"$\eta$ / predicted edge $\alpha^*(\hat p)/a$", ylabel="fraction of repeats that stayed",
             title="stay or leave", ylim=(-0.05, 1.05), xlim=(0, max(factors) * 1.15 if factors else 2))
    ax_r.legend(fontsize=6)
    model = f"{o.get('model', '?')} on {o.get('dataset', '?')}"
    return caption(fig, f"Real workers: parameter server on torch.distributed (gloo) with M worker processes, from "
                        f"the stability experiment's kicked minimum ({model}, {o.get('variant', 'plain')} A-SGD). "
                        f"Left: staleness measured in each setting's pilot (bars), the geometric law of the "
                        f"queueing model (o--) and round robin (*). Right: continuations at factor × the edge "
                        f"predicted from that histogram (eq. 19: the mean dynamics of i.i.d. delays); dashed: the edge "
                        f"of the recurrence driven by the pilot's logged delays in their order; 'left' = the kick "
                        f"grew {o.get('growth', 3):g}-fold (or diverged).", scale)
