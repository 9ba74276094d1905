"""Tidy tables of the minima-stability experiment, from the search results and the long
continuations (``delay-stability stability-collect``; see experiments/stability.py for the runs).

thresholds.csv  one row per (experiment, variant, m, τ): η_max, the bracket, a, α_measured = a·η_max,
                α_theory = theory.critical_alpha, their ratio
fits.csv        one row per (experiment, variant, m): the line 1/η_max = s·τ + c, its R², ratio range
probes.csv      one row per continuation of a search (escaped, epochs to escape, budget, status)
curves.csv      one row per evaluation epoch of the long continuations of fig. 12

Also the plan of the figures (which searches each draws, the files a tables rule reads, their options)
and the config check's list of the experiment's training specs. Kept apart from the code that trains,
so that editing an analysis or a figure option never reruns a training job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError
from ..files import read_csv, read_json, write_csv
from ..spec import deep_merge
from .stability import EXPERIMENTS, curve_file, curve_points, probe_spec, search_file, searches

#: Columns of thresholds.csv (one row per experiment, variant, momentum and τ).
THRESHOLD_COLUMNS = (
    "experiment", "variant", "momentum", "tau", "lr_max", "lr_escape", "sharpness",
    "alpha_measured", "alpha_escape", "alpha_theory", "ratio", "inv_a_lr_max", "inv_a_lr_theory",
    "n_probes", "budget_epochs", "censored",
)
#: Columns of fits.csv (one row per experiment, variant and momentum): the line 1/η_max = s·τ + c.
FIT_COLUMNS = ("experiment", "variant", "momentum", "n_tau", "slope", "intercept", "r2",
               "ratio_min", "ratio_max", "max_abs_deviation")
#: Columns of probes.csv (one row per continuation run).
PROBE_COLUMNS = (
    "experiment", "variant", "momentum", "tau", "lr", "alpha", "escaped", "epochs_to_escape",
    "epochs_run", "budget_epochs", "status", "final_train_loss", "run_dir",
)
#: Columns of curves.csv (one row per probe and evaluation epoch).
CURVE_COLUMNS = ("experiment", "variant", "momentum", "tau", "lr", "lr_factor", "lr_max", "status",
                 "epoch", "train_loss", "val_error")


def threshold_row(experiment: str, result: dict) -> dict:
    """One row of thresholds.csv from a search result."""
    a = result["sharpness"]
    return {
        "experiment": experiment, "variant": result["variant"], "momentum": result["momentum"],
        "tau": result["tau"], "lr_max": result["lr_max"], "lr_escape": result["lr_escape"],
        "sharpness": a, "alpha_measured": result["alpha_measured"],
        "alpha_escape": result["alpha_escape"], "alpha_theory": result["alpha_theory"],
        "ratio": result["ratio"], "inv_a_lr_max": 1.0 / result["alpha_measured"],
        "inv_a_lr_theory": 1.0 / result["alpha_theory"], "n_probes": len(result["probes"]),
        "budget_epochs": result["budget_epochs"], "censored": result["censored"],
    }


def collect(search_files, curve_summaries, experiment_of, out_thresholds, out_probes, out_curves) -> list[dict]:
    """Gather search results and long continuations into the tidy tables the figures read."""
    thresholds, probes, curves = [], [], []
    for path in search_files:
        result = read_json(path, "search result")
        experiment = experiment_of(path)
        thresholds.append(threshold_row(experiment, result))
        for p in result["probes"]:
            probes.append({"experiment": experiment, "variant": result["variant"],
                           "momentum": result["momentum"], "tau": result["tau"],
                           "budget_epochs": result["budget_epochs"], **p})
    for path in curve_summaries:
        info = read_json(Path(path).with_name("curve.json"), "curve record")
        summary = read_json(path, "run summary")
        for row in read_csv(Path(path).with_name("metrics.csv"), "metrics", columns=("epoch", "train_loss", "val_error")):
            curves.append({"experiment": experiment_of(path), **info, "status": summary["status"],
                           "epoch": row["epoch"], "train_loss": row["train_loss"],
                           "val_error": row["val_error"]})
    key = lambda r: (r["experiment"], r["variant"], float(r["momentum"]), int(r["tau"]))
    thresholds.sort(key=key)
    write_csv(out_thresholds, THRESHOLD_COLUMNS, thresholds)
    write_csv(Path(out_thresholds).with_name("fits.csv"), FIT_COLUMNS, fit_rows(thresholds))
    write_csv(out_probes, PROBE_COLUMNS, sorted(probes, key=lambda r: (*key(r), r["lr"])))
    write_csv(out_curves, CURVE_COLUMNS, curves)
    return thresholds


def fit_rows(thresholds):
    """Per (experiment, variant, m): the linear fit of 1/η_max vs τ and the range of α_measured/α*."""
    groups = {}
    for r in thresholds:
        groups.setdefault((r["experiment"], r["variant"], float(r["momentum"])), []).append(r)
    rows = []
    for (experiment, variant, m), rs in sorted(groups.items()):
        ratios = [float(r["ratio"]) for r in rs]
        row = {"experiment": experiment, "variant": variant, "momentum": m, "n_tau": len(rs),
               "ratio_min": min(ratios), "ratio_max": max(ratios),
               "max_abs_deviation": max(abs(x - 1) for x in ratios)}
        if len(rs) >= 2:
            slope, intercept, r2 = linear_fit([int(r["tau"]) for r in rs], [1 / float(r["lr_max"]) for r in rs])
            row.update(slope=slope, intercept=intercept, r2=r2)
        rows.append(row)
    return rows


def linear_fit(x, y):
    """Least-squares line y = slope·x + intercept and its R²."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    sxy = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_res = sum((yi - slope * xi - intercept) ** 2 for xi, yi in zip(x, y))
    ss_tot = sum((yi - my) ** 2 for yi in y)
    return slope, intercept, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


# ----------------------------------------------------------------------------- command line
# ----------------------------------------------------------------------------- the plan of the figures
# (which searches each figure draws, the files a tables rule reads, the figures' options, the config
# check's list of specs): read when Snakemake plans, never by a job that trains.


def figure_experiments(exp: dict) -> dict:
    """figure -> the experiment (config block of ``exp``) whose searches it draws: fig2 and fig12 the
    main one, fig4 the one that holds shifted momentum (its own at paper scale, else the main one)."""
    fig4 = "shifted_stability" if "shifted_stability" in exp else "stability"
    wanted = {"fig2": "stability", "fig12": "stability", "fig4": fig4}
    return {figure: name for figure, name in wanted.items() if name in exp}


def figure_searches(block: dict, figure: str) -> list[tuple[str, float, int]]:
    """The searches a figure draws, and no more: fig2 those of its (variant, m); fig4 those of
    shifted momentum for its momenta (m = 0 is plain A-SGD); fig12 the plain searches of its curves."""
    configured = searches(block)
    options = block["plots"][figure]
    if figure == "fig2":
        wanted = [(options["variant"], float(options["momentum"]))]
    elif figure == "fig4":
        wanted = [(options["variant"], float(m)) if float(m) != 0 else ("plain", 0.0) for m in options["momenta"]]
        wanted = [w for w in wanted if any(s[:2] == w for s in configured)]
    elif figure == "fig12":
        taus = sorted({tau for tau, _ in curve_points(block)})
        return [("plain", 0.0, tau) for tau in taus]
    else:
        raise UserError(f"no searches for figure {figure!r}")
    picked = [s for s in configured if s[:2] in wanted]
    if not picked:
        raise UserError(f"plots.{figure}: no threshold search of the config has "
                        f"{' or '.join(f'variant {v}, momentum {m:g}' for v, m in wanted)}")
    return picked


def config_specs(exp: dict, settings):
    """(config key, spec) of every training run of the scale block ``exp`` (registry role
    ``specs``): each block's baseline, its continuation, and a probe of every (variant, m) it
    searches (stand-in lr, delay and start: the search sets them); and every figure's selection of
    searches is checked. ``settings(spec)`` adds the run-wide settings."""
    for name in EXPERIMENTS:
        if name in exp:
            block = exp[name]
            baseline = settings(block["baseline"])
            yield f"{name}.baseline", baseline
            yield f"{name}.continuation", deep_merge(baseline, block["continuation"])
            for variant, m in sorted({s[:2] for s in searches(block)}):
                yield f"{name}.continuation", probe_spec(
                    baseline, block["continuation"], lr=1.0, tau=0, variant=variant, momentum=m,
                    init_checkpoint="kicked.pt", epochs=1)
    for figure, name in figure_experiments(exp).items():
        try:
            figure_searches(exp[name], figure)
        except UserError as exc:
            raise UserError(f"{name}.{exc}") from None


def table_inputs(experiments: dict, figure: str | None = None) -> dict:
    """The files a tables rule reads, for ``experiments`` = {experiment folder: config block}:
    every search.json (or only those ``figure`` draws) and the curves' summary.json and metrics.csv."""
    searches_, curves = [], []
    for exp_dir, block in experiments.items():
        chosen = searches(block) if figure is None else figure_searches(block, figure)
        searches_ += [search_file(exp_dir, *s) for s in chosen]
        if figure in (None, "fig12"):
            curves += [curve_file(exp_dir, *c) for c in curve_points(block)]
    return {"search": searches_, "curves": curves,
            "metrics": [str(Path(c).with_name("metrics.csv")) for c in curves]}


#: figure -> the tables it reads, in the order its plotter takes them (fig4 first reads theory's fig4a)
FIGURE_TABLES = {"fig2": ("thresholds", "fits", "probes"), "fig12": ("curves", "thresholds"),
                 "fig4": ("fig4a", "thresholds", "fits")}


def figure_tables(figure: str, tables_dir, theory_dir) -> list[str]:
    """The tables figure ``figure`` reads: its own selection under ``tables_dir``/<figure>/ (the
    stability_figure_tables rule writes them), and theory's fig4a.csv under ``theory_dir`` for fig4."""
    return [os.path.join(os.fspath(theory_dir), "fig4a.csv") if name == "fig4a"
            else os.path.join(os.fspath(tables_dir), figure, f"{name}.csv") for name in FIGURE_TABLES[figure]]


def plot_options(block: dict, figure: str, experiment: str, scale: str) -> str:
    """The ``--options`` JSON of a figure: its ``plots`` block, the experiment and the scale."""
    return json.dumps({"experiment": experiment, "scale": scale, **block["plots"][figure]})


def _experiment_of(path):
    """results/<scale>/<experiment>/{search,curves}/<a>/<b>/<file> -> <experiment>."""
    return Path(path).parents[3].name


def _cli_collect(args):
    rows = collect(args.search, args.curve or [], _experiment_of, args.thresholds, args.probes, args.curves)
    for r in rows:
        print(f"{r['experiment']:>18} {r['variant']:>8} m={float(r['momentum']):<4g} tau={int(r['tau']):<3d} "
              f"alpha_measured/alpha_theory = {float(r['ratio']):.4f}")


def register(subparsers) -> None:
    p = subparsers.add_parser("stability-collect", help="tidy tables from search results")
    p.add_argument("--search", nargs="+", required=True)
    p.add_argument("--curve", nargs="*", help="summary.json of the fig. 12 continuations")
    p.add_argument("--thresholds", required=True)
    p.add_argument("--probes", required=True)
    p.add_argument("--curves", required=True)
    p.set_defaults(func=_cli_collect)
