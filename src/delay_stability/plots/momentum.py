"""Figures of Asynchrony begets Momentum (tables from ``delay-stability momentum-theory`` and
``momentum-collect``): momentum_theory (figures 6-7), momentum_vs_workers, momentum_penalty."""

from __future__ import annotations

import numpy as np

from .style import by_name, caption, new_figure, plotter

PAPER_STYLE = {"fig3_imagenet": ("s", "C7", "paper fig. 3, ImageNet (GPU)"),
               "fig3_cifar": ("^", "C8", "paper fig. 3, CIFAR (GPU)"),
               "fig8_cifar_cpu": ("D", "C9", "paper fig. 8, CIFAR (CPU, negatives)")}
STRATEGY_STYLE = {"tuned_all": ("o-", "C0", "tuned μ, negatives allowed"),
                  "tuned_nonnegative": ("s-", "C1", "tuned μ ≥ 0"),
                  "fixed": ("^-", "C3", "fixed μ = {fixed:g}"),
                  "corrected": ("v--", "C2", "correction μ*(1) − (1 − 1/M)")}


def _setup(options):
    o = options or {}
    return (f"{o.get('model', '?')} on {o.get('dataset', '?')}, batch {o.get('batch_size', '?')}, "
            f"≤ {o.get('epochs', '?')} epochs, target training loss {o.get('target_loss', '?')}, "
            f"{o.get('seeds', '?')} seeds, {o.get('lrs_per_worker', '?')} η per (M, μ) ×{o.get('lr_factor', 1.5):g} apart")


@plotter("momentum_theory")
def plot_momentum_theory(tables, scale=None, options=None):
    """Figures 6-7: rate-optimal μ_L vs μ_S for each Q (left); distance after k steps, tuned vs fixed μ_L (right)."""
    t6 = by_name(tables, "optimal_mu_l", "rate")
    t7 = by_name(tables, "strategy", "distance")
    quad = by_name(tables, "measured_mu_l")
    fig, (ax, ax_r, ax_q) = new_figure(ncols=3, height=3.6)
    for i, Q in enumerate(sorted(set(t6["Q"]))):
        r = t6.where(Q=Q)
        order = np.argsort(r["mu_s"])
        ax.plot(r["mu_s"][order], r["optimal_mu_l"][order], "o-", color=f"C{i}", ms=3,
                label=f"condition number Q = {Q:g}")
    ax.axhline(0, color="k", lw=0.7)
    ax.set(xlabel=r"implicit momentum $\mu_S = 1 - 1/M$", ylabel=r"optimal explicit momentum $\mu_L$",
           ylim=(-1, 1))
    ax.legend(fontsize=7)
    for i, strategy in enumerate(sorted(set(t7["strategy"]), key=lambda s: (s != "tuned", s))):
        r = t7.where(strategy=strategy)
        order = np.argsort(r["mu_s"])
        label = r"tuned $\alpha$ and $\mu_L$" if strategy == "tuned" else \
            rf"tuned $\alpha$, $\mu_L$ = {strategy.split('_', 1)[1]}"
        ax_r.plot(r["mu_s"][order], r["distance"][order], "o-", ms=3, color=f"C{i + 2}", label=label)
    steps = int(t7["steps"][0]) if t7.n_rows else 10
    ax_r.set(yscale="log", xlabel=r"implicit momentum $\mu_S$",
             ylabel=f"distance to optimum after {steps} steps (γ^{steps})",
             title=f"Q = {float(t7['Q'][0]):g}" if t7.n_rows else None)
    ax_r.legend(fontsize=7)
    order = np.argsort(quad["mu_s"])
    for col, fmt, label in (("optimal_mu_l", "k-", "Theorem 7 optimum"), ("rate_mu_l", "s--", "grid: least rate γ"),
                            ("expected_mu_l", "^:", "grid: least expected distance"),
                            ("measured_mu_l", "o", "grid: least measured distance (DelayedSGD)")):
        ax_q.plot(quad["mu_s"][order], quad[col][order], fmt, ms=5, mfc="none" if col != "measured_mu_l" else None,
                  label=label)
    ax_q.axhline(0, color="k", lw=0.6)
    ax_q.set(xlabel=r"$\mu_S = 1 - 1/M$", ylabel=r"best explicit momentum $\mu_L$",
             title=f"least squares, Q = {float(quad['Q'][0]):g}" if quad.n_rows else None, ylim=(-1, 1))
    ax_q.legend(fontsize=6)
    return caption(fig, "Asynchrony begets Momentum, figs. 6-7 from Theorem 7: the explicit momentum μ_L that "
                        "minimises the rate γ of the expected iterates (over μ_L ∈ (−1, 1) and α > 0), quadratics "
                        "with 40 eigenvalues spread over [1, Q]; middle: γ^k with α and μ_L tuned vs α tuned at "
                        "fixed μ_L. Right: the least-squares stand-in, DelayedSGD with M random workers (mean "
                        "iterate over schedule seeds after T steps, α tuned on a grid) beside the predictions.",
                   scale or "theory")


@plotter("momentum_vs_workers")
def plot_momentum_vs_workers(tables, scale=None, options=None):
    """Best explicit μ vs M (negatives allowed and μ ≥ 0), the prediction μ*(1) − (1 − 1/M), the paper's points."""
    best = by_name(tables, "best_momentum", "negatives")
    paper = by_name(tables, "source", "quantity")
    fig, ax = new_figure(height=3.8, width=5.2)
    for negatives, (fmt, color, label) in ((True, ("o-", "C0", "ours: tuned μ, negatives allowed")),
                                            (False, ("s--", "C1", "ours: tuned μ ≥ 0"))):
        r = best.where(negatives=str(negatives))
        ok = np.isfinite(r["best_momentum"])
        ax.plot(r["workers"][ok], r["best_momentum"][ok], fmt, color=color, ms=5, label=label)
    r = best.where(negatives="True")
    sync = r.where(workers=1.0)
    if sync.n_rows and np.isfinite(sync["best_momentum"][0]):
        M = np.geomspace(1, max(r["workers"]), 100)
        pred = np.clip(sync["best_momentum"][0] - (1 - 1 / M), -0.9, 0.9)
        ax.plot(M, pred, ":", color="k", label=r"prediction $\mu^*(1) - (1 - 1/M)$")
    for source, (marker, color, label) in PAPER_STYLE.items():
        p = paper.where(source=source, quantity="best_momentum")
        if p.n_rows:
            ax.plot(p["workers"], p["value"], marker, color=color, mfc="none", ms=6, label=label)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xscale="log", xlabel="number of asynchronous workers M", ylabel="best explicit momentum μ",
           ylim=(-1, 1))
    ax.set_xticks(sorted(set(best["workers"]) | set(paper["workers"])))
    ax.set_xticklabels([f"{int(m)}" for m in sorted(set(best["workers"]) | set(paper["workers"]))])
    ax.legend(fontsize=6.5, loc="lower left")
    return caption(fig, "Best explicit momentum (fewest mean steps to the target training loss, η tuned per (M, μ)) "
                        "vs the number of random workers M (geometric staleness); dotted: the implicit-momentum "
                        f"prediction. {_setup(options)}.", scale)


@plotter("momentum_penalty")
def plot_momentum_penalty(tables, scale=None, options=None):
    """Steps to target normalised to the best case vs M, per strategy, with the paper's figure 4/8 values."""
    pen = by_name(tables, "strategy", "penalty")
    paper = by_name(tables, "source", "quantity")
    fixed = float((options or {}).get("fixed_momentum", 0.9))
    fig, (ax, ax_r) = new_figure(ncols=2, height=3.8)
    for strategy, (fmt, color, label) in STRATEGY_STYLE.items():
        r = pen.where(strategy=strategy)
        ok = np.isfinite(r["penalty"])
        ax.plot(r["workers"][ok], r["penalty"][ok], fmt, color=color, ms=4, label=label.format(fixed=fixed))
        missing = r["workers"][~ok]
        if missing.size:
            ax.plot(missing, np.full(missing.size, 1.0), "x", color=color, ms=7)
    ax.set(xscale="log", yscale="log", xlabel="number of asynchronous workers M",
           ylabel="steps to target / best case", title="this reproduction")
    ax.legend(fontsize=6.5, title="× : no η reached the target with every seed", title_fontsize=6)
    for quantity, strategy in (("penalty_tuned_all", "tuned_all"), ("penalty_tuned_nonnegative", "tuned_nonnegative"),
                               ("penalty_fixed", "fixed")):
        fmt, color, label = STRATEGY_STYLE[strategy]
        p = paper.where(quantity=quantity)
        ax_r.plot(p["workers"], p["value"], fmt, color=color, ms=4, mfc="none", label=label.format(fixed=0.9))
    ax_r.set(xscale="log", yscale="log", xlabel="number of groups", ylabel="statistical penalty",
             title="paper, figs. 4 and 8 (CIFAR, CPU cluster)")
    ax_r.legend(fontsize=6.5)
    for a in (ax, ax_r):
        ticks = sorted(set(pen["workers"]) | set(paper["workers"]))
        a.set_xticks(ticks)
        a.set_xticklabels([f"{int(m)}" for m in ticks])
    return caption(fig, "Statistical penalty of asynchrony: mean steps to the target training loss, normalised to "
                        "the best case, vs the number of random workers M, for momentum tuned with and without "
                        f"negative values, fixed μ = {fixed:g} and the implicit-momentum correction (each with η "
                        f"tuned). {_setup(options)}.", scale)
