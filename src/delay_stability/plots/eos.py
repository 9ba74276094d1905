"""The figure of the delayed edge of stability (tables from ``delay-stability eos-collect``)."""

from __future__ import annotations

import matplotlib
import numpy as np

from ..errors import UserError
from matplotlib.figure import Figure

from .style import caption, plotter, rows_of, setup_style

EOS_STYLES = {"plain": ("o", "-"), "momentum": ("s", "--"), "shifted": ("^", ":")}
EOS_EQUATION = {"plain": "eq. 4", "momentum": "eq. 26", "shifted": "eq. 11"}


def _eos_tables(tables):
    """(plateaus, tracks, theory) among the --tables, recognised by their columns."""
    wanted = {"plateaus": ("plateau", "predicted", "ratio"), "tracks": ("step", "sharpness"),
              "theory": ("alpha_star",)}
    found = {}
    for name, columns in wanted.items():
        matches = [t for t in tables if all(c in t for c in columns)]
        if not matches:
            raise UserError(f"delayed_eos needs a {name} table (columns {', '.join(columns)}) from eos-collect")
        found[name] = matches[0]
    return found["plateaus"], found["tracks"], found["theory"]


def _eos_run_label(row, with_lr=False):
    """'τ=4: 1.021' (plateau / predicted), with a note when the edge was not reached."""
    m = f", m={row['momentum']:g}" if row["variant"] != "plain" else ""
    head = f"{row['variant'] + ' ' if row['variant'] != 'plain' else ''}τ={row['tau']:g}{m}"
    if with_lr:
        head += f" (η={row['lr']:.3g})"
    if row["status"] == "diverged":
        return f"{head}: diverged"
    note = "" if row["reached_edge"] else ", edge not reached"
    return f"{head}: {row['ratio']:.3f}{note}"


def _eos_fixed_panel(ax, plateaus, tracks, lr, colors):
    """Sharpness vs step at one η for every τ, dashed at the predicted edge α*(τ)/η."""
    rows = [r for r in rows_of(plateaus) if r["series"] == "fixed" and r["lr"] == lr and r["variant"] == "plain"]
    finite = []
    for r in sorted(rows, key=lambda r: r["tau"]):
        tr = tracks.where(series="fixed", variant="plain", lr=lr, tau=r["tau"])
        color = colors[r["tau"]]
        ax.plot(tr["step"], tr["sharpness"], "-", lw=1.0, color=color, label=_eos_run_label(r))
        ax.axhline(r["predicted"], color=color, ls="--", lw=0.9)
        finite += [v for v in tr["sharpness"] if np.isfinite(v)] + [r["predicted"]]
    if finite:
        ax.set_ylim(0.7 * min(finite), 1.6 * max(r["predicted"] for r in rows))
    ax.set(yscale="log", xlabel="step", ylabel=r"sharpness $a = \lambda_{max}(H)$",
           title=f"fixed η = {lr:g}, from initialisation (dashed: α*(τ)/η)")
    ax.legend(title="τ: plateau / (α*/η)", fontsize=6.5, title_fontsize=7, loc="lower right")


def _eos_scaled_panel(ax, plateaus, tracks, colors, edge_tol, burn_in=None):
    """a(t) / (α*/η) for the runs with η = α*(τ, m)/A: every curve should settle at 1."""
    rows = [r for r in rows_of(plateaus) if r["series"] == "scaled"]
    for r in sorted(rows, key=lambda r: (r["variant"] != "plain", r["variant"], r["momentum"], r["tau"])):
        tr = tracks.where(series="scaled", variant=r["variant"], momentum=r["momentum"], tau=r["tau"])
        marker, ls = EOS_STYLES.get(r["variant"], ("o", "-"))
        ax.plot(tr["step"], tr["sharpness"] / r["predicted"], ls=ls, lw=0.9, color=colors[r["tau"]],
                label=_eos_run_label(r))
    ax.axhspan(1 - edge_tol, 1 + edge_tol, color="0.85", alpha=0.6, lw=0, label=f"±{edge_tol:.0%}")
    ax.axhline(1.0, color="k", lw=0.8)
    edges = sorted({float(f"{r['predicted']:.6g}") for r in rows})
    where = f"A = {edges[0]:g}" if len(edges) == 1 else "A per run"
    start = f", after {burn_in}" if burn_in else ""
    ax.set(xlabel="step" + (" after the burn-in" if burn_in else ""),
           ylabel=r"$a(t) \,/\, (\alpha^*(\tau, m)/\eta)$", ylim=(0.75, 1.3),
           title=f"η = α*(τ, m)/A ({where}){start}")
    ax.legend(title="run: plateau / (α*/η)", fontsize=6, title_fontsize=7, ncol=2, loc="upper right")


def _eos_summary_panel(ax, plateaus, edges):
    """1/(η·plateau) vs τ against 1/α*(τ, m) of every variant (eq. 4/6, 26, 11)."""
    groups = sorted({(v, m) for v, m in zip(edges["variant"], edges["momentum"])},
                    key=lambda g: (g[0] != "plain", g))
    colors = dict(zip(groups, [f"C{i}" for i in range(len(groups))]))
    for v, m in groups:
        th = edges.where(variant=v, momentum=m)
        marker, ls = EOS_STYLES.get(v, ("o", "-"))
        label = "plain" if v == "plain" else f"{'server momentum' if v == 'momentum' else 'shifted'} m={m:g}"
        ax.plot(th["tau"], 1.0 / th["alpha_star"], ls=ls, lw=1.1, color=colors[(v, m)],
                label=f"{label}: 1/α* ({EOS_EQUATION.get(v, '')})")
        for series, filled in (("scaled", True), ("fixed", False)):
            for r in [r for r in rows_of(plateaus) if r["series"] == series and r["variant"] == v and r["momentum"] == m]:
                if not np.isfinite(r["plateau"]):
                    continue
                y = 1.0 / (r["lr"] * r["plateau"])
                if not r["reached_edge"]:
                    ax.plot(r["tau"], y, "x", color="0.4", ms=5)
                    continue
                ax.plot(r["tau"], y, marker, ms=4.5, color=colors[(v, m)],
                        mfc=colors[(v, m)] if filled else "none")
    ax.plot([], [], "o", color="0.3", label="measured, η = α*/A (filled)")
    ax.plot([], [], "o", color="0.3", mfc="none", label="measured, fixed η (open)")
    ax.plot([], [], "x", color="0.4", label="edge not reached")
    ax.set(xlabel=r"delay $\tau$", ylabel=r"$1/(a\eta)$, $a$ = plateau sharpness",
           title="plateau vs the predicted edge")
    ax.legend(fontsize=6.5, loc="upper left")


@plotter("delayed_eos")
def plot_delayed_eos(tables, scale=None, options=None):
    """Delayed edge of stability: the sharpness of full-batch delayed GD settles at α*(τ, m)/η.

    Tables (any order): plateaus.csv, tracks.csv, theory.csv of ``eos-collect``. Panels: sharpness
    vs step at each fixed η (dashed: α*(τ)/η, eq. 6); a(t)/(α*/η) for the runs with η = α*(τ, m)/A;
    1/(η·plateau) vs τ against 1/α*(τ, m) (eq. 4/6, 26, 11). ``options``: edge_tol (the band,
    default 0.05), burn_in (text naming the burn-in the scaled runs start from, e.g.
    "2300 steps of GD at η = 0.05").
    """
    options = options or {}
    edge_tol = float(options.get("edge_tol", 0.05))
    plateaus, tracks, edges = _eos_tables(tables)
    fixed_lrs = sorted({float(lr) for s, lr in zip(plateaus["series"], plateaus["lr"]) if s == "fixed"})
    n_panels = len(fixed_lrs) + 2
    nrows = (n_panels + 1) // 2
    setup_style()
    fig = Figure(figsize=(9.6, 3.6 * nrows + 0.9))
    axes = list(fig.subplots(nrows, 2, squeeze=False).ravel())
    taus = sorted({float(t) for t in plateaus["tau"]})
    colors = dict(zip(taus, matplotlib.colormaps["plasma"](np.linspace(0, 0.85, max(len(taus), 1)))))
    for ax, lr in zip(axes, fixed_lrs):
        _eos_fixed_panel(ax, plateaus, tracks, lr, colors)
    _eos_scaled_panel(axes[len(fixed_lrs)], plateaus, tracks, colors, edge_tol, options.get("burn_in"))
    _eos_summary_panel(axes[len(fixed_lrs) + 1], plateaus, edges)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    letters = "abcdefgh"
    for letter, ax in zip(letters, axes[:n_panels]):
        ax.set_title(f"({letter}) {ax.get_title()}")
    fixed = f"({letters[0]})" + (f"–({letters[len(fixed_lrs) - 1]})" if len(fixed_lrs) > 1 else "")
    names = {"fixed": fixed if fixed_lrs else None, "scaled": f"({letters[len(fixed_lrs)]})",
             "summary": f"({letters[len(fixed_lrs) + 1]})"}
    return caption(fig, _eos_caption(plateaus, edge_tol, names), scale)


def _eos_caption(plateaus, edge_tol, names):
    """What the figure shows, with the acceptance numbers read from the plateau table."""
    rows = rows_of(plateaus)
    scaled = [r for r in rows if r["series"] == "scaled"]
    plain = [r for r in scaled if r["variant"] == "plain"]
    small = [r for r in plain if r["tau"] <= 4 and np.isfinite(r["ratio"])]
    worst = max((abs(r["ratio"] - 1) for r in small), default=float("nan"))
    large = ", ".join(f"τ={r['tau']:g}: {r['ratio']:.3f}" + ("" if r["reached_edge"] else " (edge not reached)")
                      for r in plain if r["tau"] > 4)
    starts = [r["start_sharpness"] / r["predicted"] for r in scaled if np.isfinite(r["start_sharpness"])]
    missed = [r for r in rows if not r["reached_edge"]]
    diverged = sum(1 for r in missed if r["status"] == "diverged")
    parts = [
        "Delayed edge of stability (beyond the paper): full-batch delayed GD (eq. 2), sharpness a = λmax of the "
        "training-loss Hessian tracked by warm-started Lanczos. Linear stability (eq. 4) predicts that a(t) settles "
        "at α*(τ, m)/η: α* = 2 sin(π/(4τ+2)) without momentum (eq. 6), eq. 26 with server momentum, eq. 11 with "
        "shifted momentum.",
    ]
    if names["fixed"]:
        excess = [r["plateau"] - r["predicted"] for r in rows
                  if r["series"] == "fixed" and r["tau"] >= 1 and r["reached_edge"] and np.isfinite(r["plateau"])]
        size = f" (plateau − α*/η = {min(excess):.2f} to {max(excess):.2f} for τ ≥ 1)" if excess else ""
        parts.append(f"{names['fixed']}: one η for every τ; each delay settles near its own dashed edge, from "
                     "below (progressive sharpening) or from above (a(0) already exceeds it); the excess over the "
                     f"edge is about the same in absolute terms{size}, so it is largest relative to small edges "
                     "α*(τ)/η.")
    if scaled:
        low, high = (f"{min(starts):.2f}", f"{max(starts):.2f}") if starts else ("", "")
        start = f", starting at a(0)/A = {low}" + (f"–{high}" if high != low else "") if starts else ""
        parts.append(f"{names['scaled']}: η = α*(τ, m)/A{start}; plateau = median a(t) over the last half of "
                     f"training; plain τ ≤ 4: max |plateau/(α*/η) − 1| = {worst:.1%} (band ±{edge_tol:.0%})"
                     + (f"; larger delays: {large}" if large else "") + ".")
    parts.append(f"{names['summary']}: 1/(η·plateau) vs τ against 1/α*.")
    if missed:
        note = f", {diverged} of them diverged" if diverged else ""
        parts.append(f"{len(missed)} run(s) did not reach the edge within the budget{note} (x; noted in the legends).")
    return " ".join(parts)

