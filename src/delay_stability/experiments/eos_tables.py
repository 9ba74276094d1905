"""The tables of the delayed edge of stability, from finished tracked runs (``eos-collect``).

plateaus.csv  one row per run: the median sharpness over the last half of training vs α*(τ, m)/η
tracks.csv    every measurement of every run
theory.csv    α*(τ, m) for τ = 0..(largest delay run)

Kept apart from delay_stability.eos (the tracking that runs inside training), so that editing an
analysis never reruns a training job.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .. import theory
from ..errors import UserError
from ..files import write_csv
from ..spec import validate_spec
from .eos import (SETTINGS_FILE, TRACK_FILE, burn_in_spec, delay_of, fixed_runs, predicted_edge, read_run_record,
                  read_track, scaled_runs, scaled_spec)

#: Columns of plateaus.csv (one row per run).
PLATEAU_COLUMNS = (
    "series", "variant", "momentum", "tau", "lr", "plateau", "predicted", "ratio", "reached_edge",
    "approach", "start_sharpness", "first_edge_step", "plateau_mean", "plateau_q10", "plateau_q90",
    "max_sharpness", "steps", "tracked", "status", "final_loss", "hvps", "track_seconds",
    "run_seconds", "run",
)
#: Columns of tracks.csv (one row per run and tracked step).
TRACKS_COLUMNS = ("series", "variant", "momentum", "tau", "lr", "predicted", "step", "sharpness", "loss")
#: Columns of theory.csv (the exact edge α* for every τ up to the largest delay run).
THEORY_COLUMNS = ("variant", "momentum", "tau", "alpha_star")
EDGE_TOL = 0.05  # a run "reached the edge" when a(t) >= (1 - EDGE_TOL) * α*/η


# ------------------------------------------------------------------------------------------------
# 1. The plateau of one track
# ------------------------------------------------------------------------------------------------


def plateau(steps, values, predicted, *, edge_tol=EDGE_TOL) -> dict:
    """Where the sharpness of one run settled, and how it got there.

    With T the last tracked step and a(t) the tracked sharpness (non-finite values dropped):

        plateau          = median{ a(t) : t ≥ T/2 }   (the last half of training)
        ratio            = plateau / predicted          (predicted = α*(τ, m)/η)
        first_edge_step  = the first t with a(t) ≥ (1 − edge_tol)·predicted (None: never)
        reached_edge     = first_edge_step ≤ T/2: the edge was reached before the plateau window
        approach         = "below" if a(0) < predicted else "above"

    plus the mean and the 10% / 90% quantiles over the window, a(0) and max a(t).
    """
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    steps, values = steps[keep], values[keep]
    out = {"plateau": math.nan, "ratio": math.nan, "reached_edge": False, "approach": "",
           "start_sharpness": math.nan, "first_edge_step": None, "plateau_mean": math.nan,
           "plateau_q10": math.nan, "plateau_q90": math.nan, "max_sharpness": math.nan}
    if values.size == 0:
        return out
    last = steps.max()
    window = values[steps >= last / 2]
    at_edge = np.flatnonzero(values >= (1 - edge_tol) * predicted)
    first = int(steps[at_edge[0]]) if at_edge.size else None
    median = float(np.median(window))
    out.update(
        plateau=median, ratio=median / predicted,
        reached_edge=first is not None and first <= last / 2,
        approach="below" if values[0] < predicted else "above",
        start_sharpness=float(values[0]), first_edge_step=first,
        plateau_mean=float(window.mean()), plateau_q10=float(np.quantile(window, 0.1)),
        plateau_q90=float(np.quantile(window, 0.9)), max_sharpness=float(values.max()),
    )
    return out


# ------------------------------------------------------------------------------------------------
# 2. The tables of a set of runs
# ------------------------------------------------------------------------------------------------


def run_facts(run_dir) -> dict:
    """Series, variant, momentum, τ, lr and predicted edge of a finished tracked run."""
    settings = read_run_record(os.path.join(run_dir, SETTINGS_FILE))
    provenance = read_run_record(os.path.join(run_dir, "run.json"))
    try:
        spec = validate_spec(provenance["spec"])
    except (KeyError, TypeError):
        raise UserError(f"{os.path.join(run_dir, 'run.json')}: has no training spec") from None
    delay = delay_of(spec)
    o = spec["optimizer"]
    return {
        "series": settings.get("series", ""),
        "variant": o["variant"],
        "momentum": float(o["momentum"]),
        "tau": delay if isinstance(delay, int) else float(theory.mean_delay(delay)),
        "lr": float(spec["lr"]),
        "predicted": predicted_edge(spec),
    }


def collect(run_dirs, *, edge_tol=EDGE_TOL):
    """(plateau rows, track rows, theory rows) of finished tracked runs (see the *_COLUMNS)."""
    plateaus, tracks = [], []
    for run_dir in run_dirs:
        facts = run_facts(run_dir)
        summary = read_run_record(os.path.join(run_dir, "summary.json"))
        path = os.path.join(run_dir, TRACK_FILE)
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file (is the run finished?)")
        rows = read_track(path)
        steps = [r["step"] for r in rows]
        values = [r["sharpness"] for r in rows]
        stats = plateau(steps, values, facts["predicted"], edge_tol=edge_tol)
        if summary.get("status") == "diverged":  # no plateau: the run left the edge for good
            stats.update({k: math.nan for k in ("plateau", "ratio", "plateau_mean", "plateau_q10", "plateau_q90")},
                         reached_edge=False)
        track_seconds = sum(r["seconds"] for r in rows)
        plateaus.append({
            **facts, **stats,
            "reached_edge": int(stats["reached_edge"]),
            "steps": summary.get("steps"), "tracked": len(rows), "status": summary.get("status"),
            "final_loss": rows[-1]["loss"] if rows else math.nan,
            "hvps": sum(r["hvps"] for r in rows), "track_seconds": round(track_seconds, 3),
            "run_seconds": summary.get("seconds"), "run": os.path.normpath(run_dir),
        })
        tracks.extend({**facts, "step": r["step"], "sharpness": r["sharpness"], "loss": r["loss"]}
                      for r in rows)
    order = lambda r: (r["series"], r["variant"], r["momentum"], r["tau"], r["lr"])  # noqa: E731
    plateaus.sort(key=order)
    tracks.sort(key=lambda r: (*order(r), r["step"]))
    return plateaus, tracks, theory_rows(plateaus)


def theory_rows(plateaus) -> list[dict]:
    """α*(τ, m) for τ = 0..(largest constant delay run), for every (variant, m) in the runs."""
    groups = sorted({(r["variant"], r["momentum"]) for r in plateaus if isinstance(r["tau"], int)})
    tau_max = max((r["tau"] for r in plateaus if isinstance(r["tau"], int)), default=0)
    return [{"variant": v, "momentum": m, "tau": tau, "alpha_star": theory.critical_alpha(tau, m, v)}
            for v, m in groups for tau in range(tau_max + 1)]


# ------------------------------------------------------------------------------------------------
# 3. Command: eos-collect
# ------------------------------------------------------------------------------------------------


def plot_options(block: dict, scale: str) -> str:
    """The ``--options`` JSON of the delayed_eos figure (``scale`` names the scale in its caption)."""
    opts = {"scale": scale, "edge_tol": block["edge_tol"]}
    burn = (block.get("scaled") or {}).get("burn_in")
    if burn:
        opts["burn_in"] = f"{burn['epochs']} steps of GD at η = {burn['lr']:g}"
    return json.dumps(opts)


def config_specs(exp: dict, settings):
    """(config key, spec) of every training run of the ``eos`` block of ``exp`` (registry role
    ``specs``); the scaled runs, whose η the run sets, get a stand-in lr."""
    block = exp["eos"]
    base = settings(block["train"])
    try:
        for run in fixed_runs(block, base).values():
            yield f"eos.fixed ({run.name})", run.spec
    except UserError as exc:
        raise UserError(f"eos.fixed: {exc}") from None
    if block.get("scaled"):
        yield "eos.scaled.burn_in", burn_in_spec(block, base)
        for run in scaled_runs(block):
            yield "eos.scaled", {**scaled_spec(block, base, *run, "burn_in.pt"), "lr": 1.0}


def _cli_collect(args) -> int:
    if not (0 <= args.edge_tol < 1):
        raise UserError(f"--edge-tol must be in [0, 1), got {args.edge_tol}")
    missing = [p for p in args.run if not os.path.exists(p)]
    if missing:
        raise UserError(f"--run {missing[0]}: no such file or folder")
    run_dirs = [p if os.path.isdir(p) else os.path.dirname(p) or "." for p in args.run]
    plateaus, tracks, edges = collect(run_dirs, edge_tol=args.edge_tol)
    write_csv(args.out, PLATEAU_COLUMNS, plateaus)
    if args.tracks:
        write_csv(args.tracks, TRACKS_COLUMNS, tracks)
    if args.theory:
        write_csv(args.theory, THEORY_COLUMNS, edges)
    for r in plateaus:
        note = "" if r["reached_edge"] else "  (edge not reached)"
        print(f"{r['series']:>8} {r['variant']:>8} m={r['momentum']:g} tau={r['tau']} lr={r['lr']:.4g}: "
              f"plateau {r['plateau']:.4g} / predicted {r['predicted']:.4g} = {r['ratio']:.3f}{note}")
    return 0


def register(subparsers) -> None:
    """Add ``eos-collect``."""
    c = subparsers.add_parser(
        "eos-collect", help="plateau table of tracked runs (delayed edge of stability)",
        description="Read finished eos-run folders and write the tidy tables: plateaus (one row per "
                    "run: median sharpness over the last half of training vs α*(τ, m)/η), tracks "
                    "(every measurement) and theory (α*(τ, m) for τ = 0..max).")
    c.add_argument("--run", nargs="+", required=True, metavar="PATH",
                   help="run folders (or their sharpness.csv)")
    c.add_argument("--out", required=True, metavar="CSV", help="plateaus.csv")
    c.add_argument("--tracks", default=None, metavar="CSV", help="tracks.csv (optional)")
    c.add_argument("--theory", default=None, metavar="CSV", help="theory.csv (optional)")
    c.add_argument("--edge-tol", type=float, default=EDGE_TOL,
                   help=f"reached the edge: a(t) >= (1 - TOL)·α*/η (default {EDGE_TOL})")
    c.set_defaults(func=_cli_collect)
