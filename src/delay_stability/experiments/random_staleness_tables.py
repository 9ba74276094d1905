"""Tables of the random-staleness experiment (no training here): the measured edges of its searches
beside the predicted ones (edges.csv, summary.csv, summary.md), the real-workers continuations
re-scored by every criterion (rescored.csv, scores.csv, scores.md), and its config check (registry
role ``specs``). What its jobs compute (predictions, searches) is in ``random_staleness``."""

from __future__ import annotations

import math
import sys

import numpy as np

from .. import theory
from ..errors import UserError
from ..files import atomic_write, parse_json_object, read_csv, read_json, write_csv
from .random_staleness import PREDICTION_COLUMNS, searched_models, optimizer_overrides

EDGE_COLUMNS = ("model", "seed", "alpha_measured", "alpha_escape", "censored", "n_probes", "sharpness",
                "budget_epochs")
SUMMARY_COLUMNS = ("model", "kind", "workers", "landing", "mean_staleness", "measured", "seeds", "alpha_mean",
                   "alpha_sd", "alpha_min", "alpha_max", "ci_low", "ci_high", "alpha_mean_edge",
                   "alpha_mean_square_edge", "alpha_almost_sure_edge", "alpha_almost_sure_stderr",
                   "ratio_mean", "ratio_mean_square", "ratio_almost_sure")
RESCORE_COLUMNS = ("workers", "jitter", "factor", "repeat", "outcome", "alpha", "predictor", "edge", "call",
                   "correct")
SCORE_COLUMNS = ("predictor", "source", "criterion", "correct", "total", "fraction")
#: Two-sided 95% Student t quantiles by degrees of freedom (1..10; larger: 1.96 as the limit).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


# ----------------------------------------------------------------------------- tables
def edge_rows(search_files) -> list[dict]:
    rows = []
    for path in search_files:
        for r in read_json(path, "random-staleness searches")["searches"]:
            rows.append({"model": r["label"], "seed": r["seed"], "alpha_measured": r["alpha_measured"],
                         "alpha_escape": r["alpha_escape"], "censored": bool(r["censored"]),
                         "n_probes": len(r["probes"]), "sharpness": r["sharpness"],
                         "budget_epochs": r["budget_epochs"]})
    return rows


def interval(values) -> tuple[float, float, float, float]:
    """(mean, sd, low, high): the 95% Student t interval of the mean over seeds (sd 0 for one seed)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, 0.0, mean, mean
    sd = float(x.std(ddof=1))
    half = T95.get(len(x) - 1, 1.96) * sd / math.sqrt(len(x))
    return mean, sd, mean - half, mean + half


def summary_rows(prediction_table: list[dict], edges: list[dict]) -> list[dict]:
    """One row per model: measured edge over seeds beside each criterion's α*."""
    preds, order = {}, []
    for p in prediction_table:
        if p["model"] not in preds:
            order.append(p["model"])
            preds[p["model"]] = {"meta": p}
        preds[p["model"]][p["criterion"]] = p
    rows = []
    for label in order:
        meta = preds[label]["meta"]
        measured = [e["alpha_measured"] for e in edges if e["model"] == label]
        row = {k: meta[k] for k in ("kind", "workers", "landing", "mean_staleness")}
        row.update(model=label, measured=bool(measured), seeds=len(measured))
        if measured:
            mean, sd, lo, hi = interval([float(v) for v in measured])
            row.update(alpha_mean=mean, alpha_sd=sd, alpha_min=min(map(float, measured)),
                       alpha_max=max(map(float, measured)), ci_low=lo, ci_high=hi)
        for criterion, key in (("mean", "mean"), ("mean-square", "mean_square"), ("almost-sure", "almost_sure")):
            alpha = _float_or_none(preds[label][criterion]["alpha"])
            row[f"alpha_{key}_edge"] = alpha
            row[f"ratio_{key}"] = (row["alpha_mean"] / alpha) if measured and alpha else None
        row["alpha_almost_sure_stderr"] = _float_or_none(preds[label]["almost-sure"]["stderr"])
        rows.append(row)
    return rows


def _float_or_none(value):
    if value is None or value == "":
        return None
    return float(value)


def _fmt(value, digits=3):
    return "–" if value is None or value == "" else f"{float(value):.{digits}g}"


def summary_markdown(rows: list[dict]) -> str:
    """The README's table of summary.csv: measured α (mean over seeds, 95% t-interval) beside the
    three edges and measured/predicted."""
    lines = ["| model | E[τ] | measured α = a·η (seeds: mean [95% CI]) | mean (eq. 19) | mean-square | "
             "almost-sure (± s.e.) | measured / mean-square | measured / almost-sure |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        measured = (f"{_fmt(r['alpha_mean'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] (n = {r['seeds']})"
                    if r["measured"] else "not measured (no DelayedSGD schedule)")
        lines.append(f"| {r['model']} | {_fmt(r['mean_staleness'])} | {measured} | {_fmt(r['alpha_mean_edge'])} | "
                     f"{_fmt(r['alpha_mean_square_edge'])} | {_fmt(r['alpha_almost_sure_edge'])} ± "
                     f"{_fmt(r['alpha_almost_sure_stderr'], 1)} | {_fmt(r['ratio_mean_square'])} | "
                     f"{_fmt(r['ratio_almost_sure'])} |")
    return "\n".join(lines) + "\n"


def collect(predictions_csv, search_files, edges_csv, summary_csv, summary_md=None) -> list[dict]:
    """edges.csv, summary.csv (and summary.md, the README's table) from the predictions and searches."""
    preds = read_csv(predictions_csv, "random-staleness predictions", columns=PREDICTION_COLUMNS)
    edges = edge_rows(search_files)
    write_csv(edges_csv, EDGE_COLUMNS, edges)
    rows = summary_rows(preds, edges)
    write_csv(summary_csv, SUMMARY_COLUMNS, rows)
    if summary_md:
        write_text_atomic(summary_md, summary_markdown(rows))
    return rows


def write_text_atomic(path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


# ----------------------------------------------------------------------------- real workers, re-scored
#: Longest measured staleness histogram (support 0..K) whose mean-square and almost-sure edges the
#: re-scoring computes: beyond it the (K+1)²-dimensional moment operator is left out (ARPACK need not converge).
MAX_MOMENT_SUPPORT = 40


def real_worker_predictors(workers: int, histogram, settings=None) -> dict:
    """predictor -> (source, criterion, α*) for one setting: every criterion from the measured
    histogram (i.i.d. model), from the worker count (uniform workers), and round robin (τ = M − 1).
    A predictor whose edge cannot be computed (the moment operator of a long-tailed measured
    histogram on which ARPACK does not converge) is left out, and said so on stderr."""
    out = {}
    for criterion in theory.CRITERIA:
        for name, source, edge in ((f"histogram/{criterion}", "histogram", lambda: theory.iid_edge(histogram, criterion, settings=settings)),
                                   (f"workers/{criterion}", "workers", lambda: theory.worker_edge(workers, criterion, settings=settings))):
            if source == "histogram" and criterion != "mean" and len(histogram) > MAX_MOMENT_SUPPORT:
                print(f"random-staleness-rescore: M={workers}: {name} left out (the measured staleness reaches "
                      f"{len(histogram) - 1}: a {len(histogram) ** 2}-dimensional moment operator, over the "
                      f"{MAX_MOMENT_SUPPORT ** 2} this re-scoring solves)", file=sys.stderr)
                continue
            try:
                out[name] = (source, criterion, edge()["alpha"])
            except RuntimeError as exc:
                print(f"random-staleness-rescore: M={workers}: {name} left out ({exc})", file=sys.stderr)
    out["round-robin"] = ("workers", "constant delay", theory.critical_alpha(workers - 1))
    return out


def rescore(continuations_csv, histograms_csv, settings=None) -> tuple[list[dict], list[dict]]:
    """(rescored rows, score rows) of the real-workers continuations: a predictor calls 'stay' when
    the continuation's α = a·η is below its edge; a call is correct when it matches the outcome
    (left vs anything else). The logged-sequence edge of the continuation's own delays
    (``alpha_star_sequence_own``) is scored as 'sequence'."""
    conts = read_csv(continuations_csv, "real-workers continuations",
                     columns=("workers", "jitter", "factor", "repeat", "outcome", "alpha", "alpha_star_sequence_own"))
    hists = read_csv(histograms_csv, "real-workers histograms", columns=("workers", "jitter", "staleness", "measured"))
    per_setting = {}
    for h in hists:
        per_setting.setdefault((int(h["workers"]), float(h["jitter"])), {})[int(h["staleness"])] = float(h["measured"])
    predictors = {}
    for key, hist in per_setting.items():
        probs = np.array([hist.get(k, 0.0) for k in range(max(hist) + 1)])
        last = int(np.flatnonzero(probs > 0).max())
        probs = probs[: last + 1] / probs[: last + 1].sum()
        predictors[key] = real_worker_predictors(key[0], probs, settings)
    rows, tally = [], {}
    for c in conts:
        key = (int(c["workers"]), float(c["jitter"]))
        if key not in predictors:
            raise UserError(f"{continuations_csv}: setting M={key[0]} jitter={key[1]:g} has no histogram "
                            f"in {histograms_csv}")
        alpha, left = float(c["alpha"]), c["outcome"] == "left"
        candidates = dict(predictors[key])
        candidates["sequence"] = ("log", "logged sequence", float(c["alpha_star_sequence_own"]))
        for name, (source, criterion, edge) in candidates.items():
            call = "stay" if alpha < edge else "leave"
            correct = (call == "leave") == left
            rows.append({"workers": key[0], "jitter": key[1], "factor": float(c["factor"]), "repeat": int(c["repeat"]),
                         "outcome": c["outcome"], "alpha": alpha, "predictor": name, "edge": edge, "call": call,
                         "correct": correct})
            t = tally.setdefault(name, {"predictor": name, "source": source, "criterion": criterion,
                                        "correct": 0, "total": 0})
            t["correct"] += int(correct)
            t["total"] += 1
    scores = [{**t, "fraction": t["correct"] / t["total"]} for t in tally.values()]
    return rows, scores


def scores_markdown(scores: list[dict]) -> str:
    lines = ["| predictor | source | criterion | correct calls |", "|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s['predictor']} | {s['source']} | {s['criterion']} | {s['correct']}/{s['total']} |")
    return "\n".join(lines) + "\n"




# ----------------------------------------------------------------------------- the config check
def config_specs(exp: dict, settings):
    """(config key, spec) of every training run of the ``random_staleness`` block of ``exp`` (registry
    role ``specs``): a continuation of its source experiment (``from``, which must exist at the scale)
    per searched model, with stand-in lr and start."""
    from ..spec import deep_merge
    from .stability import probe_spec

    block = exp["random_staleness"]
    source = block["from"]
    if source not in exp:
        raise UserError(f"random_staleness.from: no {source!r} block at this scale")
    try:
        models = searched_models(block)
    except (UserError, ValueError) as exc:
        raise UserError(str(exc)) from None
    baseline = settings(exp[source]["baseline"])
    for label, model in models.items():
        spec = probe_spec(baseline, exp[source]["continuation"], lr=1.0, tau=1, variant="plain",
                          momentum=0.0, init_checkpoint="kicked.pt", epochs=1)
        yield f"random_staleness.models.{label}", deep_merge(spec, {"optimizer": optimizer_overrides(model)})


# ----------------------------------------------------------------------------- command line
def _cli_collect(args):
    rows = collect(args.predictions, args.search or [], args.edges, args.summary, args.markdown)
    for r in rows:
        measured = f"{r['alpha_mean']:.4g} [{r['ci_low']:.4g}, {r['ci_high']:.4g}]" if r["measured"] else "not measured"
        print(f"{r['model']:>16}: measured {measured}; mean-square {r['alpha_mean_square_edge']}, "
              f"almost-sure {r['alpha_almost_sure_edge']}")


def _cli_rescore(args):
    options = parse_json_object(args.lyapunov, "--lyapunov")
    known = theory.LyapunovSettings().as_dict()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"--lyapunov: unknown key {', '.join(unknown)} (choose {', '.join(known)})")
    settings = theory.LyapunovSettings(**options)
    rows, scores = rescore(args.continuations, args.histograms, settings)
    write_csv(args.rescored, RESCORE_COLUMNS, rows)
    write_csv(args.scores, SCORE_COLUMNS, scores)
    if args.markdown:
        write_text_atomic(args.markdown, scores_markdown(scores))
    for s in scores:
        print(f"{s['predictor']:>24}: {s['correct']}/{s['total']} calls correct")


def register(subparsers) -> None:
    p = subparsers.add_parser("random-staleness-collect", help="edges.csv and summary.csv of random staleness")
    p.add_argument("--predictions", required=True)
    p.add_argument("--search", nargs="*", default=[])
    p.add_argument("--edges", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--markdown", default=None, help="summary.md: the summary as a Markdown table")
    p.set_defaults(func=_cli_collect)

    p = subparsers.add_parser("random-staleness-rescore",
                              help="the real-workers continuations re-scored by every criterion")
    p.add_argument("--continuations", required=True)
    p.add_argument("--histograms", required=True)
    p.add_argument("--lyapunov", default="{}", help="JSON: Monte-Carlo settings of the almost-sure edge")
    p.add_argument("--rescored", required=True)
    p.add_argument("--scores", required=True)
    p.add_argument("--markdown", default=None, help="scores.md: the scores as a Markdown table")
    p.set_defaults(func=_cli_rescore)
