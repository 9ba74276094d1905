"""Figures: ``delay-stability plot NAME --table CSV ... --out PDF``.

    delay-stability plot fig6 --table results/theory/fig6.csv --out figures/fig6.pdf

writes figures/fig6.pdf and its PNG twin figures/fig6.png. Each experiment's figures are in the
module named like it (``theory``, ``stability``, ``eos``; ``style`` is the shared look, the tidy
table reader and the registry). To add a figure, write ``plot_NAME(tables, scale[, options]) ->
Figure`` in its experiment's module (``tables``: the ``Table`` of each ``--table`` in order) and
register it with ``@plotter("NAME")``. Every figure carries a caption (``style.caption``) saying
what it shows and which scale and data made it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect

from ..errors import UserError
from ..files import parse_json_object
from ..registry import EXPERIMENTS, all_figures, experiment_of_figure
from .style import PLOTTERS, read_table, save_figure


def load_plotters(figure=None) -> dict:
    """figure name -> plot function: of every experiment's plots module (the registry's), or only
    of the module that draws ``figure``."""
    experiments = EXPERIMENTS if figure is None else (experiment_of_figure(figure),)
    for experiment in experiments:
        importlib.import_module(experiment.plots_module)
    return PLOTTERS


def plot_figure(name, table_paths, out, scale=None, options=None):
    """Read the tables, draw figure ``name`` and save it (PDF + PNG). Returns (pdf, png).

    ``options`` (a dict of plotting options, e.g. from config.yaml's ``plots:`` blocks) is passed to
    plot functions that take it; ``options["scale"]`` sets the scale when ``scale`` is not given."""
    try:
        load_plotters(name)
    except KeyError as exc:
        raise UserError(exc.args[0]) from None
    tables = [read_table(p) for p in table_paths]
    options = dict(options or {})
    scale = scale or options.pop("scale", None)
    fn = PLOTTERS[name]
    fig = fn(tables, scale, options) if "options" in inspect.signature(fn).parameters else fn(tables, scale)
    return save_figure(fig, out)


def cmd_plot(args):
    pdf, png = plot_figure(args.figure, args.table, args.out, args.scale, (parse_json_object(args.options, "--options") if args.options is not None else {}))
    print(f"wrote {pdf} and {png}")
    return 0


def register(subparsers):
    """Add `plot` to the `delay-stability` command."""
    p = subparsers.add_parser(
        "plot", help="draw a figure from its tidy table(s)",
        description="Draw a figure from tidy tables only (never trains), writing the PDF and its PNG "
                    f"twin. Figures: {', '.join(sorted(all_figures()))}.")
    figures = sorted(all_figures())

    def known_figure(name):  # checked as argparse reads it: before it asks for --table and --out
        if name not in figures:
            raise argparse.ArgumentTypeError(f"unknown figure {name!r}; the figures are {', '.join(figures)}")
        return name

    p.add_argument("figure", type=known_figure, help="figure name, e.g. fig6")
    p.add_argument("--table", action="append", required=True, metavar="CSV",
                   help="a tidy table the figure reads (repeat for several)")
    p.add_argument("--out", required=True, metavar="PDF", help="output PDF; the PNG goes beside it")
    p.add_argument("--scale", default=None, help="scale named in the caption (quick, paper, ...)")
    p.add_argument("--options", default=None, metavar="JSON",
                   help="plotting options as a JSON object (figures that take them: fig2, fig12, fig4)")
    p.set_defaults(func=cmd_plot)

