"""Figures of the ImageNet experiment (tables from ``delay-stability imagenet-collect``): fig5, fig9."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .style import by_name, caption, new_figure, plotter

SSGD = "S-SGD"


def _regime(o):
    o = o or {}
    return (f"{o.get('model', '?')} on {o.get('dataset', '?')}, {o.get('workers', '?')} workers x batch "
            f"{o.get('batch_size', '?')}, {o.get('epochs', '?')} epochs, {o.get('warmup_epochs', '?')}-epoch warm-up from the unscaled η (Goyal), "
            f"x0.1 at epochs {', '.join(str(int(m)) for m in o.get('milestones', []))}, weight decay "
            f"{o.get('weight_decay', 0):g}"
            f"{' on conv/linear weights only' if o.get('weight_decay_on') == 'weights' else ''}; every run dampened, η scaled so that the effective step η/(1-m) of "
            f"Goyal's undampened η = {o.get('lr_ref', '?')} at m = {o.get('ref_momentum', '?')} is kept "
            f"(S-SGD: x workers; A-SGD: x workers/τ, τ = {o.get('tau', '?')})")


def _mean_curve(t, key, arm, column):
    """(epochs, mean over seeds, min, max) of ``column`` for one arm."""
    d = t.where(**{key: arm})
    epochs = np.array(sorted(set(d["epoch"])))
    values = [d.where(epoch=e)[column] for e in epochs]
    return epochs, *(np.array([f(v) if len(v) else np.nan for v in values]) for f in (np.nanmean, np.nanmin, np.nanmax))


def _final(runs, key, arm):
    r = runs.where(**{key: arm})
    v = np.where(np.isfinite(r["final_val_error"]), r["final_val_error"], 1.0)
    t = np.where(np.isfinite(r["final_train_error"]), r["final_train_error"], 1.0)
    bad = [s for s in r["status"] if s != "completed"]
    return 100 * float(np.mean(v)), 100 * float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 100 * float(np.mean(t)), len(v), bad


def _draw(ax, curves, key, arm, color, label):
    e, val, lo, hi = _mean_curve(curves, key, arm, "val_error")
    ax.plot(e, 100 * val, "-", color=color, label=label)
    if np.any(hi > lo):
        ax.fill_between(e, 100 * lo, 100 * hi, color=color, alpha=0.15, lw=0)
    e, tr, _, _ = _mean_curve(curves, key, arm, "train_error")
    ax.plot(e[1:], 100 * tr[1:], "--", color=color, lw=1)


def _label(arm, final):
    mean, sd, train, n, bad = final
    spread = f" ± {sd:.2f}" if n > 1 else ""
    note = f", {len(bad)} {bad[0]}" if bad else ""
    return f"{arm}: val {mean:.2f}%{spread} (train {train:.2f}%{note})"


@plotter("fig5")
def plot_fig5(tables, scale=None, options=None):
    """Fig. 5: one panel per A-SGD arm, S-SGD in each; val error solid, train error dashed."""
    runs = by_name(tables, "final_val_error", "variant")
    curves = by_name(tables, "epoch", "variant")
    arms = list(dict.fromkeys(runs["variant"]))
    if SSGD not in arms:
        raise UserError("fig5.csv has no S-SGD run (the baseline of every panel)")
    others = [a for a in arms if a != SSGD]
    fig, axes = new_figure(ncols=max(len(others), 1), width=3.0 * max(len(others), 1), height=3.4)
    axes = np.atleast_1d(axes)
    ref = _final(runs, "variant", SSGD)
    for ax, arm in zip(axes, others):
        _draw(ax, curves, "variant", SSGD, "C0", _label(SSGD, ref))
        _draw(ax, curves, "variant", arm, "C1", _label(arm, _final(runs, "variant", arm)))
        ax.set(title=f"A-SGD, {arm}", xlabel="epoch", ylim=(0, 100))
        ax.legend(fontsize=6, loc="upper right")
    axes[0].set_ylabel("error (%)")
    return caption(fig, "Fig. 5: S-SGD (blue) against A-SGD (orange) with standard momentum, m = 0, shifted momentum "
                        "and η x 1/√τ instead of 1/τ; solid: validation error, dashed: train error (mean of the "
                        "epoch's steps, train mode), band: min-max over seeds; final errors (mean over seeds) in the "
                        f"legends. {_regime(options)}.", scale)


def _appendix_c(mean: float) -> tuple[np.ndarray, np.ndarray]:
    """Appendix C's discretised N(τ, 1): P(τ = k) = P(k - 0.5 ≤ z ≤ k + 0.5), k = 1..2τ."""
    from ..theory import gaussian_delay

    p = np.asarray(gaussian_delay(mean), dtype=float)
    return np.arange(p.size), p


@plotter("fig9")
def plot_fig9(tables, scale=None, options=None):
    """Fig. 9: constant delay vs the Gaussian arm (same mean staleness), mean over seeds with the
    min-max band; right: each arm's realised staleness histogram beside appendix C's N(τ, 1)."""
    runs = by_name(tables, "final_val_error", "delay")
    curves = by_name(tables, "epoch", "delay")
    hist = by_name(tables, "probability", "arm") if any("probability" in t for t in tables) else None
    fig, axes = new_figure(ncols=2 if hist is not None else 1, width=9.0 if hist is not None else 5.0, height=3.6)
    axes = np.atleast_1d(axes)
    ax = axes[0]
    arms = list(dict.fromkeys(runs["delay"]))
    colors = dict(zip(arms, ("C1", "C0", "C2", "C3")))
    for arm in arms:
        _draw(ax, curves, "delay", arm, colors[arm], _label(arm, _final(runs, "delay", arm)))
    ax.set(xlabel="epoch", ylabel="error (%)", ylim=(0, 100))
    ax.legend(fontsize=7)
    o = options or {}
    tau = o.get("gaussian_mean", o.get("tau"))
    if hist is not None:
        hx = axes[1]
        for arm in arms:
            d = hist.where(arm=arm)
            if not len(d["staleness"]):
                continue
            ks = np.array(sorted(set(d["staleness"])))
            total = np.array([sum(c for k, c in zip(d["staleness"], d["count"]) if k == kk) for kk in ks], dtype=float)
            hx.bar(ks, total / total.sum(), width=0.8, alpha=0.5, color=colors[arm],
                   label=f"{arm}: mean {np.dot(ks, total) / total.sum():.2f}")
        if tau is not None:
            k, p = _appendix_c(float(tau))
            hx.plot(k, p, "k.-", lw=1, label=f"appendix C: N({float(tau):g}, 1)")
        hx.set(xlabel="staleness τ", ylabel="fraction of updates")
        hx.legend(fontsize=7)
    return caption(fig, f"Fig. 9: A-SGD ({o.get('variant', '?')}, m = {o.get('momentum', '?')}) with a constant delay "
                        "and with a stochastic delay of the same mean staleness: M workers under the authors' Gaussian "
                        "rule (the landing worker drawn with P ∝ Φ((staleness − M)/(M/4)); every gradient lands once), "
                        "where the paper's appendix C describes a discretised Gaussian P(τ = k) = P(k - 0.5 ≤ z ≤ k + 0.5), "
                        "z ~ N(μ, 1), k = 1..2μ (right, black, beside the realised staleness histograms, all seeds); "
                        "solid: validation, dashed: train error; band: min-max over seeds; final errors ± std over "
                        f"seeds in the legend. {_regime(options)}.", scale)
