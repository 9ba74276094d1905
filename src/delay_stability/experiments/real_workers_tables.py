"""Tables and figure options of the real-workers experiment, from the launches' folders (apart from
experiments/real_workers.py, whose run configs the launches read, so that editing a table or a figure
option never relaunches the workers).

    outcomes.csv        one row per continuation: workers, jitter, factor, repeat, stay/leave, staleness
    histograms.csv      the pilot's measured staleness histogram beside the geometric law and round robin
    settings.csv        one row per setting (M, jitter): mean staleness, distances to the laws, the edges
    continuations.csv   outcomes.csv with α = a·η and the edges of each continuation's own staleness
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import staleness as st
from .. import theory
from ..files import read_json, write_csv
from .real_workers import PILOT

OUTCOME_COLUMNS = ("workers", "jitter", "factor", "repeat", "outcome", "mean_staleness", "predicted_lr", "lr")
HISTOGRAM_COLUMNS = ("workers", "jitter", "staleness", "measured", "geometric", "round_robin")
SETTING_COLUMNS = ("workers", "jitter", "updates", "mean_staleness", "tv_geometric", "tv_round_robin",
                   "alpha_star", "alpha_star_geometric", "alpha_star_round_robin", "alpha_star_sequence", "predicted_lr",
                   "sharpness",
                   "lost_workers", "restarts")
CONTINUATION_COLUMNS = ("workers", "jitter", "factor", "repeat", "outcome", "updates", "alpha", "alpha_star_own",
                        "alpha_star_sequence_own", "mean_staleness")


def setting_rows(run_dir, growth: float = 3.0) -> tuple[list[dict], list[dict], dict]:
    """(outcome rows, histogram rows, setting row) of one finished launch."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json", "real-workers summary")
    pilot = read_json(run_dir / PILOT / "summary.json", "real-workers pilot summary")
    workers, jitter = int(pilot["workers"]), float(pilot["jitter"])
    outcomes = []
    for name in summary["phases"]:
        if name == PILOT:
            continue
        s = read_json(run_dir / name / "summary.json", "real-workers phase summary")
        own = st.read_staleness(run_dir / name / "staleness.csv")
        outcomes.append({"workers": workers, "jitter": jitter, "factor": s["factor"],
                         "repeat": int(name.rsplit("-r", 1)[1]), "outcome": s["outcome"],
                         "mean_staleness": s["mean_staleness"], "predicted_lr": s["predicted_lr"], "lr": s["lr"],
                         "updates": s["updates"], "alpha": s["lr"] * float(summary["sharpness"]),
                         "alpha_star_own": theory.critical_alpha(st.histogram(own)),
                         "alpha_star_sequence_own": st.sequence_edge(own, growth)})
    logged = st.read_staleness(run_dir / PILOT / "staleness.csv")
    measured = st.histogram(logged)
    geo, rr = st.geometric_law(workers), st.round_robin_law(workers)
    top = max(len(measured), len(rr), int(min(len(geo), 4 * workers + 1)))
    pad = lambda p, k: float(p[k]) if k < len(p) else 0.0  # noqa: E731
    hist = [{"workers": workers, "jitter": jitter, "staleness": k, "measured": pad(measured, k),
             "geometric": pad(geo, k), "round_robin": pad(rr, k)} for k in range(top)]
    edge = summary["edge"] or {}
    setting = {"workers": workers, "jitter": jitter, "updates": pilot["updates"],
               "mean_staleness": pilot["mean_staleness"],
               "tv_geometric": st.total_variation(measured, geo), "tv_round_robin": st.total_variation(measured, rr),
               "alpha_star": edge.get("alpha_star"), "alpha_star_geometric": theory.critical_alpha(geo),
               "alpha_star_round_robin": theory.critical_alpha(workers - 1),
               "alpha_star_sequence": st.sequence_edge(logged, growth),
               "predicted_lr": edge.get("predicted_lr"), "sharpness": summary.get("sharpness"),
               "lost_workers": sum(1 for e in summary["lost"] if e["event"] == "lost"),
               "restarts": summary["restarts"]}
    return outcomes, hist, setting


def collect(run_dirs, outcomes_csv, histograms_csv, settings_csv, growth: float = 3.0,
            continuations_csv=None) -> int:
    """Write the tables from the launches' folders; returns the number of continuations.
    ``continuations.csv`` adds, per continuation, α = a·η and the edges of its *own* staleness
    (eq. 19 of its histogram, and of its logged sequence)."""
    outcomes, hists, sets = [], [], []
    for d in run_dirs:
        o, h, s = setting_rows(d, growth)
        outcomes += o
        hists += h
        sets.append(s)
    write_csv(outcomes_csv, OUTCOME_COLUMNS, outcomes)
    write_csv(histograms_csv, HISTOGRAM_COLUMNS, hists)
    write_csv(settings_csv, SETTING_COLUMNS, sets)
    if continuations_csv:
        write_csv(continuations_csv, CONTINUATION_COLUMNS, outcomes)
    return len(outcomes)


def plot_options(block: dict, scale: str, baseline: dict) -> str:
    return json.dumps({"scale": scale, "model": baseline.get("model"), "dataset": baseline.get("dataset"),
                       "variant": block["variant"], "momentum": block["momentum"],
                       "growth": block["escape"]["growth"]})


def _cli_collect(args):
    n = collect(args.run, args.outcomes, args.histograms, args.settings, args.growth, args.continuations)
    print(f"wrote {args.outcomes} ({n} continuations), {args.histograms}, {args.settings}")
    return 0


def register(subparsers) -> None:
    """Add `real-workers-collect` to the `delay-stability` command."""
    p = subparsers.add_parser("real-workers-collect", help="tables of the real-workers experiment",
                              description="outcomes.csv, histograms.csv and settings.csv from the launches' folders.")
    p.add_argument("--run", nargs="+", required=True, help="run folders (one per setting)")
    p.add_argument("--outcomes", required=True)
    p.add_argument("--histograms", required=True)
    p.add_argument("--settings", required=True)
    p.add_argument("--continuations", help="continuations.csv: each continuation with the edges of its own staleness")
    p.add_argument("--growth", type=float, default=3.0, help="the escape rule's growth G (sequence edge)")
    p.set_defaults(func=_cli_collect)
