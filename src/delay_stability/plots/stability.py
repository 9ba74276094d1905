"""Figures of the minima-stability experiment (tables from ``delay-stability stability-collect``):
fig2, fig12 and fig4 (right)."""

from __future__ import annotations

import matplotlib
import numpy as np

from ..errors import UserError
from ..theory import critical_alpha
from .style import by_name, caption, new_figure, plotter, tau_colors

ESCAPE_NOTE = ("A run 'left the minimum' when its training loss rose above L_min + G²(L_kick − L_min) "
               "(the kick along the top Hessian eigenvector grew G-fold) within its epoch budget; "
               "η_max is the largest η that stayed (bisection on log η).")


def _stability_rows(t, options, variant=None, momentum=None):
    rows = t.where(experiment=options.get("experiment", "stability"))
    if variant is not None:
        rows = rows.where(variant=variant)
    if momentum is not None:
        rows = rows.where(momentum=float(momentum))
    return rows


def _fit_row(tables, options, variant, momentum):
    """The row of fits.csv (the line 1/η_max = slope·τ + intercept) of (variant, m), or None."""
    fits = _stability_rows(by_name(tables, "slope", "intercept", "r2"), options, variant, momentum)
    if fits.n_rows == 0 or not np.isfinite(fits["slope"][0]):
        return None
    return float(fits["slope"][0]), float(fits["intercept"][0]), float(fits["r2"][0])


@plotter("fig2")
def plot_fig2(tables, scale=None, options=None):
    """Fig. 2: epochs to leave the minimum vs η per τ (left); 1/η_max vs τ, fit and theory (right)."""
    options = options or {}
    variant, m = options.get("variant", "plain"), options.get("momentum", 0.0)
    thr = _stability_rows(by_name(tables, "lr_max", "alpha_theory"), options, variant, m)
    probes = _stability_rows(by_name(tables, "epochs_to_escape", "budget_epochs"), options, variant, m)
    if thr.n_rows == 0:
        raise UserError(f"fig2: no thresholds for variant {variant!r}, momentum {m:g}")
    taus = sorted(set(thr["tau"]))
    colors = tau_colors(taus)
    fig, (ax, ax_r) = new_figure(ncols=2, height=3.6)
    for tau in taus:
        p = probes.where(tau=tau)
        left = p["escaped"] == "True"
        order = np.argsort(p["lr"][left])
        ax.plot(p["lr"][left][order], p["epochs_to_escape"][left][order], "o-", color=colors[tau],
                ms=3, label=f"τ = {int(tau)}")
        stayed = ~left
        ax.plot(p["lr"][stayed], p["budget_epochs"][stayed], "v", color=colors[tau], ms=3, alpha=0.6)
        row = thr.where(tau=tau)
        ax.plot(row["lr_max"], row["budget_epochs"], "o", mfc="none", mec="k", ms=7)
    ax.set(xscale="log", yscale="log", xlabel=r"learning rate $\eta$", ylabel="epochs to leave the minimum")
    ax.legend(ncol=2, fontsize=7, title="▼ stayed (budget), ○ threshold", title_fontsize=7)
    a = float(thr["sharpness"][0])
    fit = _fit_row(tables, options, variant, m)
    if fit is None:
        raise UserError(f"fig2: fits.csv has no line for variant {variant!r}, momentum {m:g}")
    slope, intercept, r2 = fit
    err_lo = np.zeros(thr.n_rows)
    err_hi = np.where(np.isfinite(thr["lr_escape"]), 1 / thr["lr_max"] - 1 / thr["lr_escape"], 0.0)
    ax_r.errorbar(thr["tau"], 1 / thr["lr_max"], yerr=[err_hi, err_lo], fmt="o", color="C0",
                  label=r"measured $1/\eta_{max}$")
    tt = np.linspace(0, max(taus), 200)
    ax_r.plot(tt, slope * tt + intercept, "-", color="C0", alpha=0.7,
              label=f"linear fit (R² = {r2:.4f})")
    theory = [a / critical_alpha(int(round(x)), momentum=m, variant=variant) for x in range(int(max(taus)) + 1)]
    ax_r.plot(range(int(max(taus)) + 1), theory, "--", color="k", label=r"theory $a/\alpha^*(\tau)$")
    ax_r.set(xlabel=r"delay $\tau$", ylabel=r"$1/\eta_{max}$")
    ax_r.legend()
    return caption(fig, f"Fig. 2: continuing from a minimum (a = λmax = {a:.4g}) with delay τ and learning rate "
                        f"η ({variant}, m = {m:g}). Left: epochs until training leaves the minimum; circles mark "
                        f"the stability threshold η_max. Right: 1/η_max is linear in τ and follows "
                        f"a/α*(τ) = a/(2 sin(π/(4τ+2))). {ESCAPE_NOTE}", scale)


@plotter("fig12")
def plot_fig12(tables, scale=None, options=None):
    """Fig. 12: training loss or validation error vs epochs of long continuations at η = f·η_max."""
    options = options or {}
    curves = _stability_rows(by_name(tables, "epoch", "lr_factor"), options)
    if curves.n_rows == 0:
        raise UserError("fig12: the curves table has no continuation runs")
    metric = options.get("metric", "val_error")
    taus = [t for t in options.get("taus", sorted(set(curves["tau"]))) if t in set(curves["tau"])]
    factors = sorted(set(curves["lr_factor"]))
    cmap = matplotlib.colormaps["coolwarm"]
    colors = dict(zip(factors, cmap(np.linspace(0.0, 1.0, len(factors)))))
    fig, axes = new_figure(ncols=len(taus), width=3.1 * len(taus), height=3.3)
    axes = axes if isinstance(axes, list) else [axes]
    for ax, tau in zip(axes, taus):
        c = curves.where(tau=tau)
        for f in factors:
            rows = c.where(lr_factor=f)
            if rows.n_rows == 0:
                continue
            y = rows[metric]
            ax.plot(rows["epoch"], y, "-" if f <= 1 else "--", color=colors[f],
                    label=f"η = {f:g}·η_max ({rows['status'][0]})")
        lr_max = float(c["lr_max"][0])
        ax.set(title=f"τ = {int(tau)}, η_max = {lr_max:.3g}", xlabel="epochs after the minimum",
               ylabel=metric.replace("_", " "))
        if metric == "train_loss":
            ax.set_yscale("log")
        ax.legend(fontsize=6)
    return caption(fig, "Fig. 12: continuations from the minimum of Fig. 2 at learning rates around the "
                        "measured stability threshold η_max (plain A-SGD, no early stop). Below η_max the "
                        "kick dies out and the run stays; above it the run leaves the minimum, faster for "
                        "larger η, and settles elsewhere or diverges (status in the legend).", scale)


@plotter("fig4")
def plot_fig4(tables, scale=None, options=None):
    """Fig. 4: shifted momentum — theory 1/(aη) vs τ (left); measured 1/(a·η_max) vs τ (right)."""
    options = options or {}
    theory = by_name(tables, "inv_alpha", "mean_delay")
    thr_all = by_name(tables, "lr_max", "alpha_theory")
    variant = options.get("variant", "shifted")
    momenta = [float(m) for m in options.get("momenta", sorted(set(theory["momentum"])))]
    fig, (ax, ax_r) = new_figure(ncols=2, height=3.6)
    all_m = sorted(set(theory["momentum"]) | set(momenta))
    colors = dict(zip(all_m, matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(all_m)))))
    for m in sorted(set(theory["momentum"])):
        rows = theory.where(momentum=m)
        ax.plot(rows["tau"], rows["inv_alpha"], "-", color=colors.get(m, "0.6"), label=f"m = {m:g}")
    ax.set(xlabel=r"delay $\tau$", ylabel=r"$1/(a\eta)$ at the edge (theory)")
    ax.legend(title="shifted momentum")
    for m in momenta:
        rows = _stability_rows(thr_all, options, variant, m)
        if rows.n_rows == 0 and m == 0.0:  # shifted momentum with m = 0 is plain A-SGD
            rows = _stability_rows(thr_all, options, "plain", 0.0)
        if rows.n_rows == 0:
            continue
        x, y = rows["tau"], 1 / rows["alpha_measured"]
        ax_r.plot(x, y, "o", color=colors[m], label=f"m = {m:g}")
        fit = _fit_row(tables, options, str(rows["variant"][0]), m)
        if fit is not None:  # fits.csv's 1/η_max = slope·τ + intercept, in units of 1/(aη)
            a = float(rows["sharpness"][0])
            ax_r.plot(x, (fit[0] * x + fit[1]) / a, "-", color=colors[m], alpha=0.8)
        ax_r.plot(x, 1 / rows["alpha_theory"], "x", color=colors[m], ms=5, alpha=0.7)
    ax_r.set(xlabel=r"delay $\tau$", ylabel=r"measured $1/(a\,\eta_{max})$")
    ax_r.legend(title="o measured, x theory, — fit", title_fontsize=7)
    return caption(fig, "Fig. 4: shifted momentum (eq. 10). Left: 1/(aη) at which the largest root of eq. 11 "
                        "reaches the unit circle. Right: measured 1/(a·η_max) at a minimum of the network "
                        f"(markers), linear fits (lines) and theory (crosses): larger m, larger stable η. "
                        f"{ESCAPE_NOTE}", scale)

