"""Figures: a shared style, captions, atomic saving, the figure registry and `delay-stability plot`.

Plotting code reads tidy tables (CSV) and nothing else: it never trains and never recomputes a
result, so changing a plot option never reruns an experiment.

    delay-stability plot fig6 --table results/theory/fig6.csv --out figures/fig6.pdf

writes figures/fig6.pdf and its PNG twin figures/fig6.png. To add a figure, write a function
``plot_NAME(tables, scale) -> matplotlib.figure.Figure`` (``tables``: the ``Table`` of each
``--table`` in order; ``scale``: the ``--scale`` given, or None) and register it::

    @plotter("fig2")
    def plot_fig2(tables, scale): ...

Every figure carries a caption (``caption``) saying what it shows and which scale and data made it.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import tempfile
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .errors import UserError

#: What each scale means, for captions. Any other text is printed as given.
SCALE_NOTES = {
    "theory": "exact: characteristic equation, scale-independent",
    "quick": "quick scale: small stand-in models on the embedded digits data, CPU (not the paper's setup)",
    "paper": "paper scale: the paper's models, datasets and epochs",
}

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "legend.frameon": False,
    "pdf.fonttype": 42,
}

CAPTION_FONTSIZE = 7


def setup_style():
    """The shared look of every figure (matplotlib rcParams)."""
    matplotlib.rcParams.update(STYLE)


def new_figure(ncols=1, width=None, height=3.2):
    """A figure with ``ncols`` axes side by side (no pyplot state, no display backend needed)."""
    setup_style()
    width = width or (4.6 if ncols == 1 else 3.9 * ncols)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, (axes[0] if ncols == 1 else list(axes))


def caption(fig, text, scale):
    """Put a footer under the axes: what the figure shows, then the scale/data that produced it
    (``scale`` is "theory", "quick", "paper", or free text). Call it last, before saving."""
    note = SCALE_NOTES.get(scale, scale) if scale else "scale not stated"
    width_in = fig.get_size_inches()[0]
    chars = max(40, int(width_in * 72 / (0.62 * CAPTION_FONTSIZE)))  # ~0.6 em per character
    wrapped = textwrap.fill(f"{text} [{note}]", width=chars)
    lines = wrapped.count("\n") + 1
    height_in = fig.get_size_inches()[1]
    frac = (lines * CAPTION_FONTSIZE * 1.35 / 72 + 0.08) / height_in
    fig.text(0.01, 0.01, wrapped, ha="left", va="bottom", fontsize=CAPTION_FONTSIZE, color="0.25")
    fig.tight_layout(rect=(0, frac, 1, 1))
    return fig


def _save_atomic(fig, path, fmt):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        fig.savefig(tmp, format=fmt, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_figure(fig, pdf_path):
    """Write ``fig`` to ``pdf_path`` (.pdf) and its PNG twin beside it, each atomically.
    Returns (pdf, png) paths."""
    pdf = Path(pdf_path)
    if pdf.suffix != ".pdf":
        raise UserError(f"--out: expected a .pdf path, got {str(pdf_path)!r}")
    pdf.parent.mkdir(parents=True, exist_ok=True)
    png = pdf.with_suffix(".png")
    _save_atomic(fig, pdf, "pdf")
    _save_atomic(fig, png, "png")
    return pdf, png


# ------------------------------------------------------------------------------------------------
# Tidy tables
# ------------------------------------------------------------------------------------------------


class Table(dict):
    """A tidy CSV table: column name -> numpy array (float where every value parses, else str)."""

    def __init__(self, columns, path):
        super().__init__(columns)
        self.path = Path(path)

    def __missing__(self, key):
        raise UserError(f"table {self.path}: no column {key!r} (columns: {', '.join(self)})")

    @property
    def n_rows(self):
        return len(next(iter(self.values()))) if self else 0

    def where(self, **equal):
        """The rows whose columns equal the given values, as a new Table."""
        mask = np.ones(self.n_rows, dtype=bool)
        for key, value in equal.items():
            mask &= self[key] == value
        return Table({k: v[mask] for k, v in self.items()}, self.path)


def _column(values):
    """Floats where every non-empty value parses (empty cells become NaN), else strings."""
    try:
        return np.array([float(v) if v != "" else np.nan for v in values])
    except ValueError:
        return np.array(values, dtype=str)


def read_table(path):
    """Read a tidy CSV table written by the pipeline; a missing, empty or ragged file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"table {path} not found")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"table {path} cannot be read: {exc}") from None
    if len(rows) < 2:
        raise UserError(f"table {path} is empty (no header or no rows)")
    header, body = rows[0], rows[1:]
    if any(len(r) != len(header) for r in body):
        raise UserError(f"table {path} is corrupt: rows do not all have {len(header)} columns")
    return Table({name: _column([r[i] for r in body]) for i, name in enumerate(header)}, path)


# ------------------------------------------------------------------------------------------------
# The figure registry
# ------------------------------------------------------------------------------------------------

#: figure name -> plot function(tables, scale) -> Figure
PLOTTERS = {}


def plotter(name):
    """Register ``fn(tables, scale) -> Figure`` as the plot function of figure ``name``."""

    def register_plotter(fn):
        PLOTTERS[name] = fn
        return fn

    return register_plotter


def _one_table(tables, name):
    if len(tables) != 1:
        raise UserError(f"{name} reads exactly one --table, got {len(tables)}")
    return tables[0]


# ------------------------------------------------------------------------------------------------
# Theory figures (tables from `delay-stability theory-table`)
# ------------------------------------------------------------------------------------------------

INV_ALPHA_LABEL = r"$1/(a\eta)$ at the stability edge"


def _fit_line(x, y):
    slope, intercept = np.polyfit(x, y, 1)
    return slope, intercept


@plotter("fig6")
def plot_fig6(tables, scale=None):
    """Fig. 6: 1/(aη) at the edge vs τ (eq. 4), numeric, vs the linear approximation (2τ+1)/π (eq. 7)."""
    t = _one_table(tables, "fig6")
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
    t = _one_table(tables, "fig7")
    b = t["b"]
    return _stochastic_delay_figure(
        t, "fig7", r"$\tau \sim$ unif{1, b}",
        f"Fig. 7: uniform delay τ ~ unif{{1, b}}, b = {int(b.min())}..{int(b.max())}: 1/(aη) at which the "
        "largest root of z − 1 + aη Σ_k P(τ=k) z^{−k} = 0 (eq. 19/20) reaches the unit circle, vs E[τ]. "
        "Still linear in E[τ]: η must fall as 1/E[τ].")


@plotter("fig8")
def plot_fig8(tables, scale=None):
    """Fig. 8: appendix C's discretised N(μ, 1) on k = 1..2μ: 1/(aη) at the edge vs E[τ]."""
    t = _one_table(tables, "fig8")
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
    t = _one_table(tables, "fig10")
    return _momentum_figure(
        t, "Fig. 10: A-SGD with (standard) server momentum m and dampening: 1/(aη) at which the largest "
           "root of z^{τ+1} − (1+m) z^τ + m z^{τ−1} + aη(1−m) = 0 (eq. 26) reaches the unit circle, vs τ. "
           "Still linear in τ, and steeper for larger m: momentum shrinks the stable range of η.")


@plotter("fig4a")
def plot_fig4a(tables, scale=None):
    """Fig. 4 (left): shifted momentum (eq. 11): 1/(aη) at the edge vs τ for several m."""
    t = _one_table(tables, "fig4a")
    return _momentum_figure(
        t, "Fig. 4 (left): shifted momentum: 1/(aη) at which the largest root of "
           "z^{τ+2} − z^{τ+1} + (aη(1−m) − m) z + m = 0 (eq. 11) reaches the unit circle, vs τ. "
           "Larger m allows a larger η at every delay: shifted momentum improves stability.")


@plotter("bridge")
def plot_bridge(tables, scale=None):
    """Asynchrony begets momentum: the geometric-delay edge equals the momentum-q edge 2(1+q)/(1−q)."""
    t = _one_table(tables, "bridge")
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


# ------------------------------------------------------------------------------------------------
# Minima stability under delay (tables from `delay-stability stability-collect`): fig2, fig12, fig4
# ------------------------------------------------------------------------------------------------

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


def _by_name(tables, *columns):
    """The table among ``tables`` that has all ``columns``."""
    for t in tables:
        if all(c in t for c in columns):
            return t
    raise UserError(f"no --table has the columns {', '.join(columns)}")


def _tau_colors(taus):
    return dict(zip(taus, matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(len(taus), 1)))))


def _threshold_fit(thr):
    """Linear fit of 1/η_max vs τ: (slope, intercept, R²)."""
    tau, inv = thr["tau"], 1.0 / thr["lr_max"]
    slope, intercept = np.polyfit(tau, inv, 1)
    pred = slope * tau + intercept
    ss_tot = float(((inv - inv.mean()) ** 2).sum())
    r2 = 1.0 - float(((inv - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return slope, intercept, r2


@plotter("fig2")
def plot_fig2(tables, scale=None, options=None):
    """Fig. 2: epochs to leave the minimum vs η per τ (left); 1/η_max vs τ, fit and theory (right)."""
    options = options or {}
    variant, m = options.get("variant", "plain"), options.get("momentum", 0.0)
    thr = _stability_rows(_by_name(tables, "lr_max", "alpha_theory"), options, variant, m)
    probes = _stability_rows(_by_name(tables, "epochs_to_escape", "budget_epochs"), options, variant, m)
    if thr.n_rows == 0:
        raise UserError(f"fig2: no thresholds for variant {variant!r}, momentum {m:g}")
    taus = sorted(set(thr["tau"]))
    colors = _tau_colors(taus)
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
    slope, intercept, r2 = _threshold_fit(thr)
    err_lo = np.zeros(thr.n_rows)
    err_hi = np.where(np.isfinite(thr["lr_escape"]), 1 / thr["lr_max"] - 1 / thr["lr_escape"], 0.0)
    ax_r.errorbar(thr["tau"], 1 / thr["lr_max"], yerr=[err_hi, err_lo], fmt="o", color="C0",
                  label=r"measured $1/\eta_{max}$")
    tt = np.linspace(0, max(taus), 200)
    ax_r.plot(tt, slope * tt + intercept, "-", color="C0", alpha=0.7,
              label=f"linear fit (R² = {r2:.4f})")
    from .theory import critical_alpha

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
    curves = _stability_rows(_by_name(tables, "epoch", "lr_factor"), options)
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
    theory = _by_name(tables, "inv_alpha", "mean_delay")
    thr_all = _by_name(tables, "lr_max", "alpha_theory")
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
        if rows.n_rows >= 2:
            slope, intercept = np.polyfit(x, y, 1)
            ax_r.plot(x, slope * x + intercept, "-", color=colors[m], alpha=0.8)
        ax_r.plot(x, 1 / rows["alpha_theory"], "x", color=colors[m], ms=5, alpha=0.7)
    ax_r.set(xlabel=r"delay $\tau$", ylabel=r"measured $1/(a\,\eta_{max})$")
    ax_r.legend(title="o measured, x theory, — fit", title_fontsize=7)
    return caption(fig, "Fig. 4: shifted momentum (eq. 10). Left: 1/(aη) at which the largest root of eq. 11 "
                        "reaches the unit circle. Right: measured 1/(a·η_max) at a minimum of the network "
                        f"(markers), linear fits (lines) and theory (crosses): larger m, larger stable η. "
                        f"{ESCAPE_NOTE}", scale)


# ------------------------------------------------------------------------------------------------
# `delay-stability plot`
# ------------------------------------------------------------------------------------------------


def plot_figure(name, table_paths, out, scale=None, options=None):
    """Read the tables, draw figure ``name`` and save it (PDF + PNG). Returns (pdf, png).

    ``options`` (a dict of plotting options, e.g. from config.yaml's ``plots:`` blocks) is passed to
    plot functions that take it; ``options["scale"]`` sets the scale when ``scale`` is not given."""
    if name not in PLOTTERS:
        raise UserError(f"unknown figure {name!r}; known: {', '.join(sorted(PLOTTERS))}")
    tables = [read_table(p) for p in table_paths]
    options = dict(options or {})
    scale = scale or options.pop("scale", None)
    fn = PLOTTERS[name]
    fig = fn(tables, scale, options) if "options" in inspect.signature(fn).parameters else fn(tables, scale)
    return save_figure(fig, out)


def _options(text):
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--options: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError("--options: expected a JSON object")
    return value


def cmd_plot(args):
    pdf, png = plot_figure(args.figure, args.table, args.out, args.scale, _options(args.options))
    print(f"wrote {pdf} and {png}")
    return 0


def register(subparsers):
    """Add `plot` to the `delay-stability` command."""
    p = subparsers.add_parser(
        "plot", help="draw a figure from its tidy table(s)",
        description="Draw a figure from tidy tables only (never trains), writing the PDF and its PNG "
                    f"twin. Figures: {', '.join(sorted(PLOTTERS))}.")
    p.add_argument("figure", help="figure name, e.g. fig6")
    p.add_argument("--table", action="append", required=True, metavar="CSV",
                   help="a tidy table the figure reads (repeat for several)")
    p.add_argument("--out", required=True, metavar="PDF", help="output PDF; the PNG goes beside it")
    p.add_argument("--scale", default=None, help="scale named in the caption (quick, paper, ...)")
    p.add_argument("--options", default=None, metavar="JSON",
                   help="plotting options as a JSON object (figures that take them: fig2, fig12, fig4)")
    p.set_defaults(func=cmd_plot)


# ------------------------------------------------------------------------------------------------
# Beyond the paper: the delayed edge of stability (tables from `delay-stability eos-collect`)
# ------------------------------------------------------------------------------------------------

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


def _eos_rows(t):
    return [{k: t[k][i] for k in t} for i in range(t.n_rows)]


def _eos_fixed_panel(ax, plateaus, tracks, lr, colors):
    """Sharpness vs step at one η for every τ, dashed at the predicted edge α*(τ)/η."""
    rows = [r for r in _eos_rows(plateaus) if r["series"] == "fixed" and r["lr"] == lr and r["variant"] == "plain"]
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
    rows = [r for r in _eos_rows(plateaus) if r["series"] == "scaled"]
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
            for r in [r for r in _eos_rows(plateaus) if r["series"] == series and r["variant"] == v and r["momentum"] == m]:
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
    rows = _eos_rows(plateaus)
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
