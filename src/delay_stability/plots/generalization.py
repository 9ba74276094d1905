"""Figures of the generalization experiment (tables from ``delay-stability generalization-collect``):
fig3, fig1 and fig13."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..theory import eq8_lr
from .style import by_name, caption, new_figure, plotter, tau_colors


def _budget(options):
    o = options or {}
    return (f"{o.get('model', '?')} on {o.get('dataset', '?')}, batch {o.get('batch_size', '?')}, "
            f"{o.get('epochs', '?')} epochs per run (fixed budget, no early stop but divergence)")


def _fail_note(options):
    return (f"A run fails when it diverged or its final train error is above "
            f"{100 * float((options or {}).get('fail_train_error', 0.5)):g}%; η_div = smallest η where ≥ half the seeds fail.")


@plotter("fig3")
def plot_fig3(tables, scale=None, options=None):
    """Fig. 3: final val error vs η per τ (mean ± std over seeds), eq. 8 η per τ, τ = 0's best."""
    runs = by_name(tables, "failed", "val_error", "seed")
    claims = by_name(tables, "eta_div", "eq8_lr", "gap_points")
    fit = by_name(tables, "slope", "intercept", "r2")
    taus = sorted(set(runs["tau"]))
    colors = tau_colors(taus)
    fig, (ax, ax_r) = new_figure(ncols=2, height=3.8)
    for tau in taus:
        t = runs.where(tau=tau)
        lrs = np.array(sorted(set(t["lr"])))
        mean = np.array([np.nanmean(t.where(lr=lr)["val_error"]) for lr in lrs]) * 100
        std = np.array([np.nanstd(t.where(lr=lr)["val_error"], ddof=1) if t.where(lr=lr).n_rows > 1 else 0.0
                        for lr in lrs]) * 100
        failed = np.array([np.mean(t.where(lr=lr)["failed"] == "True") >= 0.5 for lr in lrs])
        ax.errorbar(lrs, mean, yerr=std, fmt="o-", color=colors[tau], ms=3, capsize=2, label=f"τ = {int(tau)}")
        ax.plot(lrs[failed], mean[failed], "x", color=colors[tau], ms=7, mew=1.5)
        row = claims.where(tau=tau)
        if tau > 0 and row.n_rows:
            ax.axvline(float(row["eq8_lr"][0]), ls="--", color=colors[tau], lw=0.9, alpha=0.8)
    ref = claims.where(tau=0.0)
    if ref.n_rows:
        ax.axhline(100 * float(ref["best_val_error"][0]), color="k", lw=0.9, ls=":", label="τ = 0 best")
    ax.set(xscale="log", xlabel=r"learning rate $\eta$", ylabel="validation error (%)")
    ax.legend(fontsize=7, ncol=2, title="× failed (≥ half the seeds); -- eq. 8 η", title_fontsize=7)
    ok = np.isfinite(claims["eta_div"])
    ax_r.plot(claims["tau"][ok], 1 / claims["eta_div"][ok], "o", color="C3", label=r"$1/\eta_{div}$ (measured)")
    slope, intercept, r2 = (float(fit[k][0]) for k in ("slope", "intercept", "r2"))
    if np.isfinite(slope):
        tt = np.linspace(0, max(taus), 100)
        ax_r.plot(tt, slope * tt + intercept, "-", color="C3", alpha=0.7, label=f"linear fit (R² = {r2:.3f})")
    ax_r.plot(claims["tau"], 1 / claims["eq8_lr"], "--", color="k", label=r"$1/\eta_{eq.8}$")
    ax_r.plot(claims["tau"], 1 / claims["best_lr"], "s", mfc="none", color="C0", label=r"$1/\eta_{best}$")
    ax_r.set(xlabel=r"delay $\tau$", ylabel=r"$1/\eta$")
    ax_r.legend(fontsize=7)
    return caption(fig, "Fig. 3: final validation error vs η for each delay τ (mean ± std over seeds; failed "
                        "points marked ×, not dropped); dashed verticals: eq. 8 η = π·η0/(4(τ+0.5)) with η0 the "
                        "best η at τ = 0; dotted: τ = 0's best error. Right: 1/η_div, the best η and eq. 8 vs τ. "
                        f"{_fail_note(options)} {_budget(options)}.", scale)


def _fig1_rows(tables, options):
    t = by_name(tables, "epoch", "val_error", "status")
    tau = float((options or {}).get("tau", max(t["tau"])))
    if t.where(tau=tau).n_rows == 0:
        raise UserError(f"fig1.csv has no runs at τ = {tau:g}")
    return t, tau


def _final(t):
    """lr -> mean over seeds of the final val error."""
    last = max(t["epoch"]) if t.n_rows else 0
    out = {}
    for lr in sorted(set(t["lr"])):
        r = t.where(lr=lr)
        out[lr] = float(np.nanmean(r.where(epoch=max(r["epoch"]))["val_error"]))
    return out, last


def _reference(t):
    """(η0, its val error curve (epochs, errors)) of τ = 0: its best η by final val error."""
    ref = t.where(tau=0.0)
    if ref.n_rows == 0:
        return None, None
    final, _ = _final(ref)
    eta0 = min(final, key=lambda lr: (final[lr], lr))
    r = ref.where(lr=eta0)
    epochs = np.array(sorted(set(r["epoch"])))
    return eta0, (epochs, np.array([np.nanmean(r.where(epoch=e)["val_error"]) for e in epochs]))


@plotter("fig1")
def plot_fig1(tables, scale=None, options=None):
    """Fig. 1: at fig1's τ, val error vs epochs per η (left), final val error vs η (right); dashed: S-SGD."""
    t, tau = _fig1_rows(tables, options)
    d = t.where(tau=tau)
    lrs = sorted(set(d["lr"]))
    colors = tau_colors(lrs)
    fig, (ax, ax_r) = new_figure(ncols=2, height=3.6)
    for lr in lrs:
        r = d.where(lr=lr)
        epochs = np.array(sorted(set(r["epoch"])))
        ax.plot(epochs, 100 * np.array([np.nanmean(r.where(epoch=e)["val_error"]) for e in epochs]),
                color=colors[lr], label=f"η = {lr:g}")
    eta0, curve = _reference(t)
    final, _ = _final(d)
    ax_r.plot(list(final), [100 * v for v in final.values()], "o-", color="C0", label=f"τ = {int(tau)}")
    if eta0 is not None:
        ax.plot(curve[0], 100 * curve[1], "k--", label=f"S-SGD τ = 0, η = {eta0:g}")
        ax_r.axhline(100 * curve[1][-1], color="k", ls="--", lw=0.9, label=f"S-SGD τ = 0 (best η = {eta0:g})")
        ax_r.axvline(eq8_lr(eta0, tau), color="C3", ls=":", lw=0.9, label="eq. 8 η")
    ax.set(xlabel="epoch", ylabel="validation error (%)", ylim=(0, 100))
    ax.legend(fontsize=6, ncol=2)
    ax_r.set(xscale="log", xlabel=r"learning rate $\eta$", ylabel="final validation error (%)")
    ax_r.legend(fontsize=7)
    return caption(fig, f"Fig. 1: delay τ = {int(tau)}. Left: validation error along training per η (seed mean); "
                        "right: at the end of the budget vs η. Dashed: S-SGD (τ = 0) at its best η of the same "
                        f"scan; dotted: eq. 8 η from it. {_budget(options)}.", scale)


@plotter("fig13")
def plot_fig13(tables, scale=None, options=None):
    """Fig. 13: val error vs η at several epochs (fig1's runs), best η per epoch marked, eq. 8 η."""
    t, tau = _fig1_rows(tables, options)
    d = t.where(tau=tau)
    epochs = list((options or {}).get("epochs_list") or sorted(set(d["epoch"]))[-4:])
    colors = tau_colors(epochs)
    fig, ax = new_figure(ncols=1, width=4.8, height=3.6)
    for e in epochs:
        r = d.where(epoch=float(e))
        if r.n_rows == 0:
            raise UserError(f"fig13: fig1.csv has no evaluation at epoch {e}")
        lrs = np.array(sorted(set(r["lr"])))
        err = 100 * np.array([np.nanmean(r.where(lr=lr)["val_error"]) for lr in lrs])
        ax.plot(lrs, err, "o-", color=colors[e], ms=3, label=f"epoch {e}")
        i = int(np.argmin(err))
        ax.plot(lrs[i], err[i], "*", color=colors[e], ms=11, mec="k", mew=0.5)
    eta0, _ = _reference(t)
    if eta0 is not None:
        ax.axvline(eq8_lr(eta0, tau), color="k", ls="--", lw=0.9, label=f"eq. 8 η (η0 = {eta0:g})")
    ax.set(xscale="log", xlabel=r"learning rate $\eta$", ylabel="validation error (%)")
    ax.legend(fontsize=7, title="★ best η at that epoch", title_fontsize=7)
    return caption(fig, f"Fig. 13: fig1's runs (τ = {int(tau)}) read at several epochs: validation error vs η; stars "
                        "mark the best η per epoch; dashed: the eq. 8 η from S-SGD's best η0 of the final epoch. "
                        f"{_budget(options)}.", scale)
