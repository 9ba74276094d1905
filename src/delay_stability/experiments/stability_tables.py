"""Tidy tables of the minima-stability experiment, from the search results and the long
continuations (``delay-stability stability-collect``; see experiments/stability.py for the runs).

thresholds.csv  one row per (experiment, variant, m, τ): η_max, the bracket, a, α_measured = a·η_max,
                α_theory = theory.critical_alpha, their ratio
fits.csv        one row per (experiment, variant, m): the line 1/η_max = s·τ + c, its R², ratio range
probes.csv      one row per continuation of a search (escaped, epochs to escape, budget, status)
curves.csv      one row per evaluation epoch of the long continuations of fig. 12

Kept apart from the code that trains, so that editing an analysis never reruns a training job.
"""

from __future__ import annotations

from pathlib import Path

from ..files import read_csv, read_json, write_csv

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
