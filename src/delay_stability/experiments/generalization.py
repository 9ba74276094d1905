"""Generalization under delay (Section 3.2): figures 1, 3 and 13.

    fig3    val error vs η for every τ of ``fig3.taus`` x ``fig3.lrs`` x ``fig3.seeds`` (τ = 0 is
            always in the grid: it is the S-SGD reference and its best η is η0 of eq. 8)
    fig1    τ = ``fig1.tau`` and τ = 0 (S-SGD reference) x ``fig1.lrs`` x ``fig1.seeds``: val error
            vs epochs per η, and at the end
    fig13   fig1's runs read at the epochs ``fig13.epochs``

Every run trains for the ``epochs`` of its block (no early stop but divergence). The runs of one
(figure, τ) train as one ensemble job (``delay-stability ensemble``) when
``ensemble.can_ensemble`` allows it (no BatchNorm, no augmentation, ...); otherwise each run is a
job of the generic train rule. ``delay-stability generalization-collect`` then writes, under
results/<scale>/generalization/:

    fig3.csv    one row per fig3 run at its end: tau, lr, seed, epochs, status, failed, train/val
                error (fractions) and loss
    fig1.csv    one row per fig1 run and evaluation epoch: tau, lr, seed, epoch, train/val error, status
    claims.csv  per τ of fig3: eta_div, best_lr, best_val_error (mean over seeds), the eq. 8 η,
                alpha_star(τ), eta_div/alpha_star, the gap to τ = 0's best in points
    fit.csv     the line 1/eta_div = slope·τ + intercept over the τ that have an eta_div, and R²

Failure criterion (``failed``): a run fails when it diverged (train loss NaN/inf or > loss_factor·L0)
or when it did not converge: its final train error is above ``fail_train_error`` of the block.
eta_div(τ) is the smallest η of the grid at which at least half the seeds fail (empty when no η of
the grid fails: the grid does not reach the edge of that τ).
"""

from __future__ import annotations

import json
import math
import os

from .. import files
from ..errors import UserError
from ..spec import deep_merge, validate_spec
from ..theory import critical_alpha, eq8_lr
from . import grid, plan
from .stability_tables import linear_fit

FIGURES = ("fig3", "fig1", "fig13")
AXES = ("tau", "lr", "seed")
FIG3_COLUMNS = ("tau", "lr", "seed", "epochs", "status", "failed", "epochs_run", "train_error", "val_error",
                "train_loss", "val_loss", "run")
FIG1_COLUMNS = ("tau", "lr", "seed", "epoch", "val_error", "train_error", "val_loss", "train_loss", "status", "run")
CLAIMS_COLUMNS = ("tau", "n_lrs", "seeds", "eta_div", "best_lr", "best_val_error", "best_val_error_std",
                  "eq8_lr", "eta0", "alpha_star", "eta_div_over_alpha_star", "gap_points")
FIT_COLUMNS = ("slope", "intercept", "r2", "n_taus", "taus")
DEFAULT_FAIL_TRAIN_ERROR = 0.5


# ================================================================ the grids


def fig_base(block: dict, figure: str, base: dict) -> dict:
    """The base spec of a figure's runs: the block's train (``base``, with run settings) merged
    with the figure's own ``train`` overrides."""
    return deep_merge(base, (block.get(figure) or {}).get("train") or {})


def fig3_taus(block: dict) -> list[int]:
    """fig3's delays, τ = 0 first (always there: η0 of eq. 8 and the reference line)."""
    return sorted({0, *block["fig3"]["taus"]})


def fig1_taus(block: dict) -> list[int]:
    """fig1's delays: τ = 0 (the S-SGD reference) and fig1.tau."""
    return sorted({0, block["fig1"]["tau"]})


def runs(block: dict, figure: str, base: dict) -> list:
    """The GridRuns of ``figure`` ("fig3" or "fig1"), named tau{τ}/lr{η}/seed{s}."""
    fig = block[figure]
    taus = fig3_taus(block) if figure == "fig3" else fig1_taus(block)
    seeds = fig.get("seeds") or [0]
    try:
        return grid.expand(fig_base(block, figure, base), {"tau": taus, "lr": fig["lrs"], "seed": seeds})
    except UserError as exc:
        raise UserError(f"generalization.{figure}: {exc}") from None


def figures_of(block: dict) -> list[str]:
    """The figures the block builds (fig13 needs fig1)."""
    out = [f for f in ("fig3", "fig1") if f in block]
    if "fig13" in block and "fig1" in block:
        out.append("fig13")
    return out


def check_block(block: dict, base: dict) -> None:
    """UserError naming the key when fig13's epochs are not evaluation epochs of fig1's runs."""
    if "fig13" in block:
        if "fig1" not in block:
            raise UserError("generalization.fig13: reads fig1's runs; add a fig1 block")
        spec = validate_spec(fig_base(block, "fig1", base))
        epochs, every = spec["epochs"], spec["eval_every"]
        for e in block["fig13"].get("epochs") or []:
            if e > epochs or (e % every and e != epochs):
                raise UserError(f"generalization.fig13.epochs: {e} is not an evaluation epoch of fig1's runs "
                                f"(every {every} up to {epochs})")


def all_specs(block: dict, base: dict):
    """(key, spec) of the block's train spec as written (its lr and seed are set per run, but a
    mistake in it is still a mistake), then of every run the block trains."""
    yield "generalization.train", base  # the caller validates each spec before asking for the next
    for figure in ("fig3", "fig1"):
        if "train" in (block.get(figure) or {}):
            yield f"generalization.{figure}.train", fig_base(block, figure, base)
    check_block(block, base)
    for figure in ("fig3", "fig1"):
        if figure in block:
            for run in runs(block, figure, base):
                yield f"generalization.{figure} ({run.name})", run.spec


def config_specs(exp: dict, settings):
    """(config key, spec) of every training run of the ``generalization`` block of ``exp`` (registry role
    ``specs``; ``settings(spec)`` adds the run-wide settings)."""
    yield from all_specs(exp["generalization"], settings(exp["generalization"]["train"]))


def groups(runs_: list) -> dict:
    """τ -> the GridRuns of that delay (one ensemble job each)."""
    return plan.groups_by(runs_, "tau")


def ensemble_groups(runs_: list) -> dict:
    """τ -> GridRuns of the groups that train as one ensemble (``can_ensemble``); the other runs
    train one by one (the generic rule)."""
    return plan.ensemble_groups_by(runs_, "tau")



def plot_options(block: dict, figure: str, base: dict, scale: str) -> str:
    """The ``--options`` JSON of a figure: the budget and model, for the caption."""
    src = "fig3" if figure == "fig3" else "fig1"
    spec = fig_base(block, src, base)
    opts = {"model": spec["model"], "dataset": spec["dataset"], "epochs": spec["epochs"],
            "batch_size": spec["batch_size"], "fail_train_error": fail_train_error(block), "scale": scale}
    if figure in ("fig1", "fig13"):
        opts["tau"] = block["fig1"]["tau"]
    if figure == "fig13":
        opts["epochs_list"] = list(block["fig13"].get("epochs") or [])
    return json.dumps(opts, sort_keys=True)


def figure_tables(figure: str, root) -> dict:
    """The tables a figure reads (name -> path under ``root``): fig3 the fig3, claims and fit
    tables; fig1 and fig13 fig1.csv only (so that a figure target trains only the runs it draws)."""
    names = ("fig3", "claims", "fit") if figure == "fig3" else ("fig1",)
    return {n: os.path.join(os.fspath(root), f"{n}.csv") for n in names}


def fail_train_error(block: dict) -> float:
    return float(block.get("fail_train_error", DEFAULT_FAIL_TRAIN_ERROR))


# ================================================================ the tables


def _summary_of(folder):
    s = files.read_json(os.path.join(folder, "summary.json"), "summary.json")
    if not isinstance(s, dict) or "final" not in s:
        raise UserError(f"summary.json {folder}: not a run summary")
    return s


def _spec_of(folder):
    rec = files.read_json(os.path.join(folder, "run.json"), "run.json")
    spec = rec.get("spec") if isinstance(rec, dict) else None
    if not isinstance(spec, dict):
        raise UserError(f"run.json {folder}: no spec")
    return spec


def _tau_of(spec):
    o = spec.get("optimizer") or {}
    return o["workers"] - 1 if o.get("workers") is not None else int(o.get("delay", 0))


def is_failed(status: str, train_error, threshold: float) -> bool:
    """Diverged, or did not converge (final train error above ``threshold``, or not finite)."""
    if status == "diverged":
        return True
    try:
        e = float(train_error)
    except (TypeError, ValueError):
        return True
    return not math.isfinite(e) or e > threshold


def fig3_rows(folders, threshold=DEFAULT_FAIL_TRAIN_ERROR) -> list[dict]:
    """One row per run folder (FIG3_COLUMNS), sorted by (tau, lr, seed)."""
    rows = []
    for folder in folders:
        spec, s = _spec_of(folder), _summary_of(folder)
        f = s["final"]
        rows.append({"tau": _tau_of(spec), "lr": float(spec["lr"]), "seed": int(spec["seed"]),
                     "epochs": int(spec["epochs"]), "status": s["status"],
                     "failed": is_failed(s["status"], f.get("train_error"), threshold),
                     "epochs_run": s["epochs_run"], "train_error": f.get("train_error"),
                     "val_error": f.get("val_error"), "train_loss": f.get("train_loss"),
                     "val_loss": f.get("val_loss"), "run": str(folder)})
    return sorted(rows, key=lambda r: (r["tau"], r["lr"], r["seed"]))


def fig1_rows(folders) -> list[dict]:
    """One row per run folder and metrics.csv row (FIG1_COLUMNS), sorted by (tau, lr, seed, epoch)."""
    rows = []
    for folder in folders:
        spec, s = _spec_of(folder), _summary_of(folder)
        for m in files.read_csv(os.path.join(folder, "metrics.csv"), "metrics.csv"):
            rows.append({"tau": _tau_of(spec), "lr": float(spec["lr"]), "seed": int(spec["seed"]),
                         "epoch": int(m["epoch"]), **{c: float(m[c]) if m[c] != "" else None
                                                      for c in ("val_error", "train_error", "val_loss", "train_loss")},
                         "status": s["status"], "run": str(folder)})
    return sorted(rows, key=lambda r: (r["tau"], r["lr"], r["seed"], r["epoch"]))


def _mean_std(xs):
    xs = [float(x) if x is not None and math.isfinite(float(x)) else 1.0 for x in xs]  # no value: 100% error
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def claims(rows: list[dict]) -> tuple[list[dict], dict]:
    """(claims rows per τ (CLAIMS_COLUMNS), the fit row (FIT_COLUMNS)) of fig3 rows (as
    ``fig3_rows``: tau, lr, seed, val_error, failed). τ = 0 must be among them."""
    by_tau = {}
    for r in rows:
        by_tau.setdefault(int(r["tau"]), {}).setdefault(float(r["lr"]), []).append(r)
    if 0 not in by_tau:
        raise UserError("generalization claims: no τ = 0 runs (the S-SGD reference)")
    stats = {}
    for tau, by_lr in by_tau.items():
        lrs = sorted(by_lr)
        means = {lr: _mean_std([r["val_error"] for r in by_lr[lr]]) for lr in lrs}
        best = min(lrs, key=lambda lr: (means[lr][0], lr))
        fails = [lr for lr in lrs if 2 * sum(bool(r["failed"]) for r in by_lr[lr]) >= len(by_lr[lr])]
        stats[tau] = dict(n_lrs=len(lrs), seeds=max(len(v) for v in by_lr.values()), best_lr=best,
                          best_val_error=means[best][0], best_val_error_std=means[best][1],
                          eta_div=fails[0] if fails else None)
    eta0, ref = stats[0]["best_lr"], stats[0]["best_val_error"]
    out = []
    for tau in sorted(stats):
        s = stats[tau]
        a = critical_alpha(tau)
        out.append({"tau": tau, **{k: s[k] for k in ("n_lrs", "seeds", "eta_div", "best_lr", "best_val_error",
                                                     "best_val_error_std")},
                    "eq8_lr": eq8_lr(eta0, tau), "eta0": eta0, "alpha_star": a,
                    "eta_div_over_alpha_star": s["eta_div"] / a if s["eta_div"] else None,
                    "gap_points": 100.0 * (s["best_val_error"] - ref)})
    pts = [(r["tau"], 1.0 / r["eta_div"]) for r in out if r["eta_div"]]
    if len(pts) >= 2 and len({t for t, _ in pts}) >= 2:
        slope, intercept, r2 = linear_fit([t for t, _ in pts], [y for _, y in pts])
    else:
        slope = intercept = r2 = None
    fit = {"slope": slope, "intercept": intercept, "r2": r2, "n_taus": len(pts),
           "taus": " ".join(str(t) for t, _ in pts)}
    return out, fit


def write_tables(fig3_folders, fig1_folders, threshold, out: dict) -> tuple[list, dict]:
    """Write the tables ``out`` names (name -> path): fig1.csv from ``fig1_folders`` when
    ``out["fig1"]``; fig3.csv, claims.csv and fit.csv from ``fig3_folders`` when ``out["fig3"]``.
    Returns (claims rows, fit row), or ([], {}) without fig3."""
    if out.get("fig1"):
        if not fig1_folders:
            raise UserError("generalization-collect: --fig1 needs --fig1-run folders")
        files.write_csv(out["fig1"], list(FIG1_COLUMNS), fig1_rows(fig1_folders))
    if not out.get("fig3"):
        return [], {}
    if not fig3_folders or not out.get("claims") or not out.get("fit"):
        raise UserError("generalization-collect: --fig3 needs --fig3-run folders, --claims and --fit")
    rows = fig3_rows(fig3_folders, threshold)
    files.write_csv(out["fig3"], list(FIG3_COLUMNS), rows)
    table, fit = claims(rows)
    files.write_csv(out["claims"], list(CLAIMS_COLUMNS), table)
    files.write_csv(out["fit"], list(FIT_COLUMNS), [fit])
    return table, fit


# ================================================================ command line


def _cli_collect(args) -> int:
    table, fit = write_tables(args.fig3_run, args.fig1_run or [], args.fail_train_error,
                              {"fig3": args.fig3, "fig1": args.fig1, "claims": args.claims, "fit": args.fit})
    for r in table:
        div = f"{r['eta_div']:g}" if r["eta_div"] else "none in grid"
        print(f"tau={r['tau']:<3d} eta_div={div:<12} best lr={r['best_lr']:g} "
              f"val error={100 * r['best_val_error']:.2f}% gap={r['gap_points']:+.2f} points")
    if fit.get("r2") is not None:
        print(f"1/eta_div = {fit['slope']:.4g} tau + {fit['intercept']:.4g} (R^2 = {fit['r2']:.4f})")
    return 0


def register(subparsers) -> None:
    """Add ``generalization-collect``."""
    p = subparsers.add_parser(
        "generalization-collect",
        description="Tables of the generalization experiment (figs. 1, 3, 13) from finished run folders: "
                    "fig3.csv, fig1.csv, claims.csv (eta_div, best η and error per τ, eq. 8) and fit.csv "
                    "(1/eta_div vs τ).")
    p.add_argument("--fig3-run", nargs="*", default=[], metavar="DIR", help="fig3's run folders")
    p.add_argument("--fig1-run", nargs="*", default=[], metavar="DIR", help="fig1's run folders")
    p.add_argument("--fail-train-error", type=float, default=DEFAULT_FAIL_TRAIN_ERROR,
                   help="a run fails when it diverged or its final train error is above this")
    p.add_argument("--fig3", default=None, metavar="CSV")
    p.add_argument("--fig1", default=None, metavar="CSV")
    p.add_argument("--claims", default=None, metavar="CSV")
    p.add_argument("--fit", default=None, metavar="CSV")
    p.set_defaults(func=_cli_collect)
