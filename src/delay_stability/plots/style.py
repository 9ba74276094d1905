"""The shared look of every figure: style, captions, atomic saving, tidy tables, the registry.

Plotting code reads tidy tables (CSV) and nothing else: it never trains and never recomputes a
result, so changing a plot option never reruns an experiment. Each experiment's figures live in
the plots module named like it (``plots/theory.py``, ``plots/stability.py``, ``plots/eos.py``);
they register themselves with ``@plotter(name)``.
"""

from __future__ import annotations

import csv
import os
import tempfile
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..errors import UserError

SCALE_NOTES = {
    "theory": "exact: characteristic equation, scale-independent",
    "quick": "quick scale: small stand-in models on the embedded digits data, CPU (not the paper's setup)",
    "paper": "paper scale: the paper's models, datasets and epochs",
    "paper-smoke": "paper-scale smoke test: the paper's networks and rules on tiny generated data, a few steps (a test of the pipeline, not a result)",
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


def one_table(tables, name):
    if len(tables) != 1:
        raise UserError(f"{name} reads exactly one --table, got {len(tables)}")
    return tables[0]



def by_name(tables, *columns):
    """The table among ``tables`` that has all ``columns``."""
    for t in tables:
        if all(c in t for c in columns):
            return t
    raise UserError(f"no --table has the columns {', '.join(columns)}")


def tau_colors(taus):
    """One viridis colour per delay."""
    return dict(zip(taus, matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(len(taus), 1)))))


def rows_of(t):
    """The rows of a Table as a list of dicts."""
    return [{k: t[k][i] for k in t} for i in range(t.n_rows)]
