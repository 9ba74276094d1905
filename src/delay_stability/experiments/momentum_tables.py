"""The plan, tables and figure options of the momentum experiment: the network grid (its run specs
and folders, grouped per number of workers into ensembles), and the tables from its finished run
folders. experiments/momentum.py holds what the theory and stand-in jobs compute and nothing else, so
that editing the grid, a table or a figure option never reruns them.

    runs.csv     one row per run: steps to the target training loss (interpolated in log loss)
    scores.csv   per (M, μ, η): the mean over seeds; tuned.csv per (M, μ): the best η
    best.csv     per M: the best momentum, with and without negative momenta, and its penalty
    penalty.csv  per M and strategy (tuned_all, tuned_nonnegative, fixed, corrected)
    paper.csv    the paper's numbers, read off its figures

The second paper's own protocol (``decade_grid``, optional): undampened momentum with η on a decade
grid at several offsets, its own runs (an undampened η is a different dampened η for every μ), the
same tables under momentum/decade/.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .. import files, theory
from ..errors import UserError
from ..spec import deep_merge
from . import grid, plan

FIGURES = ("momentum_vs_workers", "momentum_penalty", "momentum_theory")
AXES = ("workers", "momentum", "lr", "seed")
RUN_COLUMNS = ("workers", "momentum", "lr", "seed", "status", "reached", "steps_to_target", "final_train_loss",
               "epochs_run", "run")
SCORE_COLUMNS = ("workers", "momentum", "lr", "seeds", "reached", "steps_to_target", "steps_std")
TUNED_COLUMNS = ("workers", "momentum", "best_lr", "steps_to_target", "steps_std", "lr_at_edge")
BEST_COLUMNS = ("workers", "negatives", "best_momentum", "best_lr", "steps_to_target", "penalty")
PENALTY_COLUMNS = ("workers", "strategy", "momentum", "lr", "steps_to_target", "penalty")
PAPER_COLUMNS = ("source", "workers", "quantity", "value")
STRATEGIES = ("tuned_all", "tuned_nonnegative", "fixed", "corrected")

#: The paper's numbers, read off its figures (they sit on its grid values).
PAPER = (
    [("fig3_imagenet", m, "best_momentum", v) for m, v in zip((1, 2, 4, 8, 16, 32), (0.6, 0.6, 0.6, 0.6, 0.3, 0.0))]
    + [("fig3_cifar", m, "best_momentum", v) for m, v in zip((1, 2, 4, 8), (0.7, 0.6, 0.2, 0.1))]
    + [("fig8_cifar_cpu", m, "best_momentum", v) for m, v in zip((1, 2, 4, 8, 16), (0.675, 0.45, 0.225, 0.0, -0.675))]
    + [("fig4_cifar_cpu", m, "penalty_fixed", v) for m, v in zip((1, 2, 4, 8, 16), (2, 2, 2, 3, 16))]
    + [("fig4_cifar_cpu", m, "penalty_tuned_nonnegative", v) for m, v in zip((1, 2, 4, 8, 16), (1, 1, 2, 2, 6))]
    + [("fig8_cifar_cpu", m, "penalty_tuned_all", v) for m, v in zip((1, 2, 4, 8, 16), (1, 1, 2, 2, 3))]
)


# ================================================================ the network grid (the plan of the ensemble and train jobs)


def lr_window(block: dict, workers: int) -> list[float]:
    """η = center · M^(−worker_exponent) · factor^k for k = −below..above, rounded to 4 significant digits."""
    g = block["lr_grid"]
    center = float(g["center"]) * float(workers) ** (-float(g.get("worker_exponent", 0.0)))
    factor = float(g.get("factor", 1.5))
    ks = range(-int(g.get("below", 3)), int(g.get("above", 2)) + 1)
    return [float(f"{center * factor ** k:.4g}") for k in ks]


def base_spec(block: dict, base: dict) -> dict:
    """The block's train spec with random workers, server momentum and the stop at the target."""
    target = float(block["target_loss"])
    return deep_merge(base, {"optimizer": {"schedule": "random", "variant": "momentum"},
                             "stop": {"settle": {"below": target, "window": 1}}})


def runs(block: dict, base: dict, *, validate: bool = True) -> list:
    """The GridRuns, named workers{M}/momentum{μ}/lr{η}/seed{s}. ``validate=False``: the specs are not
    checked one by one (the workflow: the config check has checked every configuration, ``all_specs``)."""
    points = [{"workers": int(M), "momentum": float(mu), "lr": lr, "seed": int(s)}
              for M in block["workers"] for mu in block["momenta"] for lr in lr_window(block, M)
              for s in block.get("seeds") or [0]]
    try:
        return grid.expand_named(base_spec(block, base), points, validate=validate)
    except UserError as exc:
        raise UserError(f"momentum: {exc}") from None


def decade_lrs(block: dict) -> list[float]:
    """The second paper's own η grid (``decade_grid``): η = top · 10^(−k − j/offsets) for
    k = 0..decades−1 and j = 0..offsets−1, 4 significant digits, largest first. Offset j = 0 is the
    paper's grid (top, top/10, ...); the other offsets shift the decades by 10^(−j/offsets), so the
    best μ can be read off each of ``offsets`` decade grids."""
    g = block["decade_grid"]
    top, decades, offsets = float(g["top"]), int(g.get("decades", 3)), int(g.get("offsets", 4))
    lrs = {float(f"{top * 10.0 ** (-k - j / offsets):.4g}") for k in range(decades) for j in range(offsets)}
    return sorted(lrs, reverse=True)


def decade_spec(block: dict, base: dict) -> dict:
    """The paper's own protocol: as ``base_spec`` but undampened (Caffe's momentum, v ← μ v + g,
    w ← w − η v; with dampening the same run has η (1 − μ) in place of η)."""
    return deep_merge(base_spec(block, base), {"optimizer": {"dampening": False}})


def decade_workers(block: dict) -> list[int]:
    g = block.get("decade_grid") or {}
    return [int(M) for M in (g.get("workers") or block["workers"])]


def decade_runs(block: dict, base: dict, *, validate: bool = True) -> list:
    """The GridRuns of the decade grid (none without ``decade_grid``), named like ``runs`` (their
    folders live under momentum/decade/); ``validate`` as in ``runs``."""
    if not block.get("decade_grid"):
        return []
    points = [{"workers": M, "momentum": float(mu), "lr": lr, "seed": int(s)}
              for M in decade_workers(block) for mu in block["momenta"] for lr in decade_lrs(block)
              for s in block.get("seeds") or [0]]
    try:
        return grid.expand_named(decade_spec(block, base), points, validate=validate)
    except UserError as exc:
        raise UserError(f"momentum.decade_grid: {exc}") from None


def check_block(block: dict) -> None:
    """UserError naming the key when the grid cannot answer its question."""
    g = block["lr_grid"]
    if float(g.get("factor", 1.5)) <= 1.0:
        raise UserError("momentum.lr_grid.factor: must be > 1")
    if int(g.get("below", 3)) + int(g.get("above", 2)) < 2:
        raise UserError("momentum.lr_grid: needs at least 3 learning rates (below + above >= 2)")
    if block.get("fixed_momentum", 0.9) not in block["momenta"]:
        raise UserError(f"momentum.fixed_momentum: {block.get('fixed_momentum', 0.9)} is not in momentum.momenta")
    if 1 not in block["workers"]:
        raise UserError("momentum.workers: must include 1 (the synchronous reference of the correction)")
    if block.get("decade_grid"):
        if 1 not in decade_workers(block):
            raise UserError("momentum.decade_grid.workers: must include 1 (the synchronous reference of the correction)")
        if len(decade_lrs(block)) < 2:
            raise UserError("momentum.decade_grid: needs at least 2 learning rates (decades x offsets >= 2)")


def all_specs(block: dict, base: dict):
    """(key, spec) of the block's train spec, then of every run (for the config check): every
    configuration (M, μ, η) at the first seed, and each further seed once. A spec's seed is checked
    alone (an integer >= 0; nothing else depends on it, see ``spec._validated``), so this finds every
    error that checking all the runs would, with 1/len(seeds) of the specs: the check runs at every
    Snakemake start, and the grid has thousands of runs."""
    yield "momentum.train", base
    check_block(block)
    seeds = block.get("seeds") or [0]
    first = runs({**block, "seeds": seeds[:1]}, base, validate=False)   # the config check validates what this yields
    for run in first:
        yield f"momentum ({run.name})", run.spec
    for seed in seeds[1:]:
        yield f"momentum.seeds ({seed})", {**first[0].spec, "seed": seed}
    for run in decade_runs({**block, "seeds": seeds[:1]}, base, validate=False):
        yield f"momentum.decade_grid ({run.name})", run.spec


def groups(runs_: list) -> dict:
    """M -> the GridRuns of that number of workers (one ensemble job each)."""
    return plan.groups_by(runs_, "workers")


def ensemble_groups(runs_: list) -> dict:
    """M -> GridRuns of the groups that train as one ensemble; the others train one by one."""
    return plan.ensemble_groups_by(runs_, "workers")



# ================================================================ figures


def caption_scale(figure: str, scale: str) -> str:
    """What the caption says produced the figure: momentum_theory is exact but for its right panel."""
    if figure == "momentum_theory":
        return "exact from Theorem 7 (left, middle); right: Monte Carlo of DelayedSGD on a quadratic, any scale"
    return scale


def plot_options(block: dict, base: dict, scale: str) -> str:
    spec = base_spec(block, base)
    opts = {"model": spec["model"], "dataset": spec["dataset"], "epochs": spec["epochs"],
            "batch_size": spec["batch_size"], "target_loss": float(block["target_loss"]),
            "seeds": len(block.get("seeds") or [0]), "lr_factor": float(block["lr_grid"].get("factor", 1.5)),
            "lrs_per_worker": len(lr_window(block, 1)), "fixed_momentum": float(block.get("fixed_momentum", 0.9)),
            "scale": scale}
    return json.dumps(opts, sort_keys=True)


# ================================================================ steps to target and the tables


def steps_to_target(rows: list[dict], target: float):
    """Interpolated steps to the target loss from metrics rows (epoch, step, train_loss): the first
    row with train_loss < target, interpolated in log loss from the row before. None if none."""
    prev = None
    for r in rows:
        loss = r["train_loss"]
        if loss is not None and math.isfinite(loss) and loss < target:
            if prev is None or not prev["train_loss"] > target:
                return float(r["step"])
            lo, hi = math.log(loss), math.log(prev["train_loss"])
            frac = (hi - math.log(target)) / (hi - lo)
            return float(prev["step"] + frac * (r["step"] - prev["step"]))
        if loss is None or not math.isfinite(loss):
            return None
        prev = r
    return None


def _float(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def run_rows(folders, target: float) -> list[dict]:
    """One row per run folder (RUN_COLUMNS)."""
    rows = []
    for folder in folders:
        rec = files.read_json(os.path.join(folder, "run.json"), "run.json")
        spec = rec.get("spec") if isinstance(rec, dict) else None
        if not isinstance(spec, dict):
            raise UserError(f"run.json {folder}: no spec")
        s = files.read_json(os.path.join(folder, "summary.json"), "summary.json")
        metrics = [{"epoch": int(m["epoch"]), "step": int(m["step"]), "train_loss": _float(m["train_loss"])}
                   for m in files.read_csv(os.path.join(folder, "metrics.csv"), "metrics.csv")]
        steps = steps_to_target(metrics, target)
        o = spec["optimizer"]
        rows.append({"workers": int(o["workers"]), "momentum": float(o["momentum"]), "lr": float(spec["lr"]),
                     "seed": int(spec["seed"]), "status": s["status"], "reached": steps is not None,
                     "steps_to_target": steps, "final_train_loss": (s.get("final") or {}).get("train_loss"),
                     "epochs_run": s.get("epochs_run"), "run": str(folder)})
    return sorted(rows, key=lambda r: (r["workers"], r["momentum"], r["lr"], r["seed"]))


def score_rows(rows: list[dict]) -> list[dict]:
    """Per (workers, momentum, lr): the mean steps to target over seeds, only if every seed reached it."""
    cells = {}
    for r in rows:
        cells.setdefault((r["workers"], r["momentum"], r["lr"]), []).append(r)
    out = []
    for (M, mu, lr), rs in sorted(cells.items()):
        steps = [r["steps_to_target"] for r in rs if r["reached"]]
        every = len(steps) == len(rs)
        mean = float(np.mean(steps)) if every else None
        std = float(np.std(steps, ddof=1)) if every and len(steps) > 1 else (0.0 if every else None)
        out.append({"workers": M, "momentum": mu, "lr": lr, "seeds": len(rs), "reached": len(steps),
                    "steps_to_target": mean, "steps_std": std})
    return out


def tuned_rows(scores: list[dict]) -> list[dict]:
    """Per (workers, momentum): the η of least score, and whether it is an end of that M's window."""
    cells = {}
    for r in scores:
        cells.setdefault((r["workers"], r["momentum"]), []).append(r)
    out = []
    for (M, mu), rs in sorted(cells.items()):
        lrs = sorted(r["lr"] for r in rs)
        ok = [r for r in rs if r["steps_to_target"] is not None]
        if not ok:
            out.append({"workers": M, "momentum": mu, "best_lr": None, "steps_to_target": None, "steps_std": None,
                        "lr_at_edge": None})
            continue
        b = min(ok, key=lambda r: (r["steps_to_target"], r["lr"]))
        out.append({"workers": M, "momentum": mu, "best_lr": b["lr"], "steps_to_target": b["steps_to_target"],
                    "steps_std": b["steps_std"], "lr_at_edge": b["lr"] in (lrs[0], lrs[-1])})
    return out


def _best(tuned: list[dict], M, allow) -> dict | None:
    ok = [r for r in tuned if r["workers"] == M and allow(r["momentum"]) and r["steps_to_target"] is not None]
    return min(ok, key=lambda r: (r["steps_to_target"], -r["momentum"])) if ok else None


def best_rows(tuned: list[dict]) -> list[dict]:
    """best.csv: per (workers, negatives) the μ of least tuned steps; penalty = steps / the best case."""
    workers = sorted({r["workers"] for r in tuned})
    out = []
    for M in workers:
        for negatives in (False, True):
            b = _best(tuned, M, (lambda mu: True) if negatives else (lambda mu: mu >= 0))
            out.append({"workers": M, "negatives": negatives,
                        "best_momentum": b["momentum"] if b else None, "best_lr": b["best_lr"] if b else None,
                        "steps_to_target": b["steps_to_target"] if b else None})
    _normalise(out)
    return out


def _normalise(rows):
    steps = [r["steps_to_target"] for r in rows if r["steps_to_target"] is not None]
    ref = min(steps) if steps else None
    for r in rows:
        r["penalty"] = r["steps_to_target"] / ref if ref and r["steps_to_target"] is not None else None


def penalty_rows(tuned: list[dict], fixed_momentum=0.9, reference=None) -> list[dict]:
    """penalty.csv: per M the four strategies (STRATEGIES), normalised to the best case of best.csv."""
    workers = sorted({r["workers"] for r in tuned})
    momenta = sorted({r["momentum"] for r in tuned})
    sync = _best(tuned, 1, lambda mu: True) if 1 in workers else None
    out = []
    for M in workers:
        picks = {
            "tuned_all": _best(tuned, M, lambda mu: True),
            "tuned_nonnegative": _best(tuned, M, lambda mu: mu >= 0),
            "fixed": next((r for r in tuned if r["workers"] == M and r["momentum"] == fixed_momentum), None),
            "corrected": None,
        }
        if sync is not None:
            want = theory.corrected_momentum(sync["momentum"], M, momenta[0], momenta[-1])
            mu = min(momenta, key=lambda m: (abs(m - want), m))
            picks["corrected"] = next((r for r in tuned if r["workers"] == M and r["momentum"] == mu), None)
        for strategy in STRATEGIES:
            p = picks[strategy]
            out.append({"workers": M, "strategy": strategy, "momentum": p["momentum"] if p else None,
                        "lr": p["best_lr"] if p else None, "steps_to_target": p["steps_to_target"] if p else None})
    if reference is None:
        steps = [r["steps_to_target"] for r in out if r["steps_to_target"] is not None]
        reference = min(steps) if steps else None
    for r in out:
        r["penalty"] = r["steps_to_target"] / reference if reference and r["steps_to_target"] is not None else None
    return out


def paper_rows() -> list[dict]:
    return [{"source": s, "workers": m, "quantity": q, "value": v} for s, m, q, v in PAPER]


def write_tables(folders, target: float, fixed_momentum: float, out_dir) -> list[dict]:
    """Write runs, scores, tuned, best, penalty and paper.csv under ``out_dir``; returns best rows."""
    if not folders:
        raise UserError("momentum-collect: no --run folders given")
    rows = run_rows(folders, target)
    scores = score_rows(rows)
    tuned = tuned_rows(scores)
    best = best_rows(tuned)
    ref = min((r["steps_to_target"] for r in best if r["steps_to_target"] is not None), default=None)
    penalty = penalty_rows(tuned, fixed_momentum, ref)
    d = os.fspath(out_dir)
    os.makedirs(d, exist_ok=True)
    for name, cols, table in (("runs", RUN_COLUMNS, rows), ("scores", SCORE_COLUMNS, scores),
                              ("tuned", TUNED_COLUMNS, tuned), ("best", BEST_COLUMNS, best),
                              ("penalty", PENALTY_COLUMNS, penalty), ("paper", PAPER_COLUMNS, paper_rows())):
        files.write_csv(os.path.join(d, f"{name}.csv"), list(cols), table)
    return best


TABLES = ("runs", "scores", "tuned", "best", "penalty", "paper")


def figure_tables(figure: str, results_dir, theory_dir) -> dict:
    """The tables a figure reads (name -> path)."""
    if figure == "momentum_theory":
        return {"theory": os.path.join(os.fspath(theory_dir), "momentum_theory.csv"),
                "fig7": os.path.join(os.fspath(theory_dir), "momentum_fig7.csv"),
                "quadratic": os.path.join(os.fspath(results_dir), "quadratic_best.csv")}
    names = ("best", "paper") if figure == "momentum_vs_workers" else ("penalty", "paper")
    return {n: os.path.join(os.fspath(results_dir), f"{n}.csv") for n in names}


def config_specs(exp: dict, settings):
    """(config key, spec) of every training run of the ``momentum`` block of ``exp`` (registry role
    ``specs``; ``settings(spec)`` adds the run-wide settings)."""
    yield from all_specs(exp["momentum"], settings(exp["momentum"]["train"]))


def _cli_collect(args) -> int:
    best = write_tables(args.run, args.target_loss, args.fixed_momentum, args.out_dir)
    for r in best:
        mu = "none reached" if r["best_momentum"] is None else f"{r['best_momentum']:+.3f}"
        pen = "" if r["penalty"] is None else f" penalty {r['penalty']:.2f}"
        print(f"M={r['workers']:<3d} negatives={str(r['negatives']):<5} best mu={mu} lr={r['best_lr']}{pen}")
    return 0


def register(subparsers) -> None:
    """Add ``momentum-collect``."""
    p = subparsers.add_parser(
        "momentum-collect",
        description="Tables of the momentum experiment from finished run folders: runs, scores, tuned, best, "
                    "penalty and paper.csv under --out-dir.")
    p.add_argument("--run", nargs="+", required=True, metavar="DIR", help="the run folders")
    p.add_argument("--target-loss", type=float, required=True, help="the training loss the steps are counted to")
    p.add_argument("--fixed-momentum", type=float, default=0.9, help="the fixed-momentum strategy (default 0.9)")
    p.add_argument("--out-dir", required=True, metavar="DIR")
    p.set_defaults(func=_cli_collect)
