"""Figures of the exact theory (tables from ``delay-stability theory-table``): fig6, fig7, fig8,
fig10, fig4a and the bridge to *Asynchrony begets Momentum*."""

from __future__ import annotations

import matplotlib
import numpy as np

from .style import caption, new_figure, one_table, plotter

INV_ALPHA_LABEL = r"$1/(a\eta)$ at the stability edge"


def _fit_line(x, y):
    slope, intercept = np.polyfit(x, y, 1)
    return slope, intercept


@plotter("fig6")
def plot_fig6(tables, scale=None):
    """Fig. 6: 1/(aη) at the edge vs τ (eq. 4), numeric, vs the linear approximation (2τ+1)/π (eq. 7)."""
    t = one_table(tables, "fig6")
    tau, inv, approx = t["tau"], t["inv_alpha"], t["inv_alpha_eq7"]
    fig, (ax, ax_err) = new_figure(ncols=2)
    ax.plot(tau, inv, "o", ms=3, label="numeric (root locus of eq. 4)")
    ax.plot(tau, approx, "-", label=r"$(2\tau+1)/\pi$ (eq. 7)")
    ax.set(xlabel=r"delay $\tau$", ylabel=INV_ALPHA_LABEL)
    ax.legend()
    pos = tau >= 1
    ax_err.plot(tau[pos], inv[pos] - approx[pos], "o-", ms=3, label="numeric − eq. 7")
    ax_err.axhline(0.05, color="0.4", ls="--", lw=1, label="0.05 (paper's bound, τ ≥ 1)")
    ax_err.set(xlabel=r"delay $\tau$", ylabel=r"difference in $1/(a\eta)$", ylim=(0, 0.06))
    ax_err.legend()
    return caption(fig, "Fig. 6: 1/(aη) at which the largest root of z^{τ+1} − z^τ + aη = 0 (eq. 4) reaches "
                        "the unit circle, vs the delay τ, and the linear approximation (2τ+1)/π (eq. 7); "
                        "right: their difference, below 0.05 for τ ≥ 1. η must fall as 1/τ.", "theory")


def _stochastic_delay_figure(t, name, label, text):
    mean, inv, approx = t["mean_delay"], t["inv_alpha"], t["inv_alpha_eq7"]
    slope, intercept = _fit_line(mean, inv)
    fig, ax = new_figure()
    ax.plot(mean, inv, "o", ms=3, label=f"{label} (root locus of eq. 19)")
    ax.plot(mean, approx, "-", lw=1, color="0.5", label=r"constant delay $\tau = E[\tau]$: $(2E[\tau]+1)/\pi$")
    ax.plot(mean, slope * mean + intercept, ":", color="C3",
            label=f"least squares: {slope:.3f} E[τ] + {intercept:.3f}")
    ax.set(xlabel=r"expected delay $E[\tau]$", ylabel=INV_ALPHA_LABEL)
    ax.legend(loc="upper left")
    return caption(fig, text, "theory")


@plotter("fig7")
def plot_fig7(tables, scale=None):
    """Fig. 7: τ ~ unif{1, b}, b = 1..64 (eq. 20): 1/(aη) at the edge vs E[τ] = (1 + b)/2."""
    t = one_table(tables, "fig7")
    b = t["b"]
    return _stochastic_delay_figure(
        t, "fig7", r"$\tau \sim$ unif{1, b}",
        f"Fig. 7: uniform delay τ ~ unif{{1, b}}, b = {int(b.min())}..{int(b.max())}: 1/(aη) at which the "
        "largest root of z − 1 + aη Σ_k P(τ=k) z^{−k} = 0 (eq. 19/20) reaches the unit circle, vs E[τ]. "
        "Still linear in E[τ]: η must fall as 1/E[τ].")


@plotter("fig8")
def plot_fig8(tables, scale=None):
    """Fig. 8: appendix C's discretised N(μ, 1) on k = 1..2μ: 1/(aη) at the edge vs E[τ]."""
    t = one_table(tables, "fig8")
    mu = t["mu"]
    return _stochastic_delay_figure(
        t, "fig8", r"discretised $N(\mu, 1)$",
        f"Fig. 8: Gaussian delay P(τ=k) ∝ P(k − 0.5 ≤ z ≤ k + 0.5), z ~ N(μ, 1), k = 1..2μ, "
        f"μ = {int(mu.min())}..{int(mu.max())}: 1/(aη) at the edge of eq. 19 vs the exact E[τ] "
        "(≈ μ; above μ for small μ, where the truncation to k ≥ 1 matters).")


def _momentum_figure(t, text):
    fig, ax = new_figure()
    momenta = sorted(set(t["momentum"]))
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(momenta)))
    for m, color in zip(momenta, colors):
        rows = t.where(momentum=m)
        ax.plot(rows["tau"], rows["inv_alpha"], "-", color=color, label=f"m = {m:g}")
    ax.set(xlabel=r"delay $\tau$", ylabel=INV_ALPHA_LABEL)
    ax.legend(title="momentum")
    return caption(fig, text, "theory")


@plotter("fig10")
def plot_fig10(tables, scale=None):
    """Fig. 10: server momentum with dampening (eq. 26): 1/(aη) at the edge vs τ for several m."""
    t = one_table(tables, "fig10")
    return _momentum_figure(
        t, "Fig. 10: A-SGD with (standard) server momentum m and dampening: 1/(aη) at which the largest "
           "root of z^{τ+1} − (1+m) z^τ + m z^{τ−1} + aη(1−m) = 0 (eq. 26) reaches the unit circle, vs τ. "
           "Still linear in τ, and steeper for larger m: momentum shrinks the stable range of η.")


@plotter("fig4a")
def plot_fig4a(tables, scale=None):
    """Fig. 4 (left): shifted momentum (eq. 11): 1/(aη) at the edge vs τ for several m."""
    t = one_table(tables, "fig4a")
    return _momentum_figure(
        t, "Fig. 4 (left): shifted momentum: 1/(aη) at which the largest root of "
           "z^{τ+2} − z^{τ+1} + (aη(1−m) − m) z + m = 0 (eq. 11) reaches the unit circle, vs τ. "
           "Larger m allows a larger η at every delay: shifted momentum improves stability.")


@plotter("bridge")
def plot_bridge(tables, scale=None):
    """Asynchrony begets momentum: the geometric-delay edge equals the momentum-q edge 2(1+q)/(1−q)."""
    t = one_table(tables, "bridge")
    q, alpha, matched, workers = t["q"], t["alpha_star"], t["matched_momentum"], t["workers"]
    fig, (ax, ax_m) = new_figure(ncols=2)
    qq = np.linspace(0, q.max(), 200)
    ax.plot(qq, 2 * (1 + qq) / (1 - qq), "-", color="0.5", label=r"momentum $q$, $\tau=0$: $2(1+q)/(1-q)$")
    ax.plot(q, alpha, "o", label=r"geometric delay $P(\tau=k) = (1-q)q^k$ (eq. 19)")
    ax.set(xlabel="q", ylabel=r"$a\eta$ at the stability edge")
    ax.legend()
    mm = np.geomspace(1, workers.max(), 200)
    ax_m.plot(mm, 1 - 1 / mm, "-", color="0.5", label=r"implicit momentum $1 - 1/M$")
    ax_m.plot(workers, matched, "o", label="momentum with the same edge")
    ax_m.set(xlabel=r"workers $M = 1/(1-q)$", ylabel="momentum", xscale="log")
    ax_m.legend()
    return caption(fig, "Bridge to 'Asynchrony begets Momentum': left, the edge aη of A-SGD whose delay is "
                        "geometric, P(τ=k) = (1−q) q^k (truncated at tail 1e-12), equals that of momentum q "
                        "with dampening and no delay. Right: the momentum with that edge, (aη − 2)/(aη + 2), "
                        "vs the M = 1/(1−q) workers whose queueing staleness is geometric: it is 1 − 1/M.",
                   "theory")

