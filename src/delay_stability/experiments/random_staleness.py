"""The true stability edge of random staleness: measured beside predicted (beyond the paper).

Eq. 19 is the edge of the *mean* iterate over delays drawn i.i.d. per step; theory section 8 adds the
mean-square and almost-sure edges, for i.i.d. delays and for M workers with a landing rule. This
experiment puts them beside the largest stable η measured with ``DelayedSGD`` on fig. 2's minimum:
the minima-stability search of experiments/stability.py (the kicked minimum, its sharpness a and
its search settings, overridden by this block's ``search``), run from the same kicked minimum with
a random schedule, once per seed of ``seeds`` (the schedule's draws: every seed is one measured
edge, and the seeds give its interval).

Staleness models (``models``: label -> one of)

    {delay: {kind: geometric, q} | {kind: gaussian, mean} | {kind: probs, probs}}
        i.i.d. delays, ``schedule="iid"`` (the model of eq. 18);
    {workers: M, landing: uniform | round-robin | gaussian}
        uniform: ``schedule="random"`` (the queueing model of *Asynchrony begets Momentum*);
        round-robin: ``schedule="round_robin"`` with τ = M − 1;
        gaussian: the authors' landing rule P ∝ Φ((s − M)/(M/4)), ``schedule="gaussian"`` (the
        staleness s of a worker is its gradient's age, 0 for the worker that just read, as in the
        theory's age modes).

Each search's budget and settle window use the nominal delay ⌈E[τ]⌉ (M − 1 for workers).

Tables (``random-staleness-theory``, ``random-staleness-collect``, ``random-staleness-rescore``)

    results/<scale>/random_staleness/predictions.csv  model, criterion, alpha, stderr (one row each)
    results/<scale>/random_staleness/edges.csv        model, seed, alpha_measured, alpha_escape,
                                                      censored, n_probes, sharpness (one row per search)
    results/<scale>/random_staleness/summary.csv      per model: the measured edge over seeds (mean,
                                                      sd, min, max, 95% t-interval) beside every
                                                      criterion's α* and the ratio measured/predicted
    results/<scale>/random_staleness/rescored.csv     the real-workers continuations (if that experiment
                                                      is configured), each predictor's edge and call
    results/<scale>/random_staleness/scores.csv       per predictor: correct calls of stay/leave

Predictors of the re-scoring: every criterion computed from the pilot's measured staleness histogram
(the i.i.d. model of the measured law), from the worker count alone (uniform workers; round robin),
and the logged-sequence edge the real-workers experiment already records.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .. import spec as spec_mod
from .. import theory
from ..errors import UserError
from ..files import atomic_write, read_csv, read_json, write_csv
from ..files import write_json as write_json_atomic

PREDICTION_COLUMNS = ("model", "kind", "workers", "landing", "mean_staleness", "criterion", "alpha", "stderr")
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


# ----------------------------------------------------------------------------- the models
def check_model(label: str, entry: dict) -> dict:
    """A model entry, checked: {"kind": "iid", "delay": {...}, "probs": [...]} or
    {"kind": "workers", "workers": M, "landing": L}."""
    if not isinstance(entry, dict):
        raise UserError(f"random_staleness.models.{label}: expected a mapping, got {entry!r}")
    if ("delay" in entry) == ("workers" in entry):
        raise UserError(f"random_staleness.models.{label}: give exactly one of delay or workers")
    try:
        if "delay" in entry:
            extra = set(entry) - {"delay"}
            if extra:
                raise ValueError(f"unknown keys {', '.join(sorted(extra))}")
            probe = {"model": "mlp", "dataset": "digits", "epochs": 1, "lr": 1.0, "optimizer": {"delay": entry["delay"]}}
            delay = spec_mod.validate_spec(probe)["optimizer"]["delay"]  # the spec's check of optimizer.delay
            if not isinstance(delay, dict):
                raise ValueError("delay: a distribution {kind: geometric|gaussian|uniform|probs, ...}; "
                                 "a constant delay is {workers: tau + 1, landing: round-robin}")
            return {"kind": "iid", "delay": delay, "probs": [float(p) for p in spec_mod.delay_probabilities(delay)]}
        extra = set(entry) - {"workers", "landing"}
        if extra:
            raise ValueError(f"unknown keys {', '.join(sorted(extra))}")
        return {"kind": "workers", "workers": theory.check_workers(entry["workers"]),
                "landing": theory.check_landing(entry.get("landing", "uniform"))}
    except (ValueError, UserError) as exc:
        raise UserError(f"random_staleness.models.{label}: {exc}") from None


def models(block: dict) -> dict:
    """label -> checked model of every entry of the block."""
    return {label: check_model(label, entry) for label, entry in block["models"].items()}


def mean_staleness(model: dict) -> float:
    if model["kind"] == "iid":
        return theory.mean_delay(model["probs"])
    return float(model["workers"] - 1)


def nominal_tau(model: dict) -> int:
    """⌈E[τ]⌉: the delay that sets a search's budget and settle window."""
    return int(math.ceil(mean_staleness(model) - 1e-9))


def measurable(model: dict) -> bool:
    """Whether ``DelayedSGD`` has this model's schedule (every model here has one)."""
    if model["kind"] == "iid":
        return True
    return {"uniform": "random", "round-robin": "round_robin", "gaussian": "gaussian"}[model["landing"]] \
        in spec_mod.WORKER_SCHEDULES


def optimizer_overrides(model: dict) -> dict:
    """The spec's ``optimizer`` of a model's continuations (merged over the stability probe's)."""
    if not measurable(model):
        raise UserError(f"no DelayedSGD schedule for {model}: no measured edge")
    if model["kind"] == "iid":
        return {"delay": dict(model["delay"]), "schedule": "iid", "workers": None}
    M = model["workers"]
    if model["landing"] == "round-robin":
        return {"delay": M - 1, "schedule": "round_robin", "workers": None}
    if model["landing"] == "uniform":
        return {"delay": M - 1, "schedule": "random", "workers": M}
    return {"delay": M - 1, "schedule": "gaussian", "workers": M}  # spread M/4, as the theory


def searched_models(block: dict) -> dict:
    return {label: m for label, m in models(block).items() if measurable(m)}


def search_file(exp_dir, label: str) -> str:
    return str(Path(exp_dir) / "search" / label / "searches.json")


def search_settings(source_block: dict, block: dict) -> dict:
    return spec_mod.deep_merge(source_block["search"], block.get("search") or {})


def lyapunov_settings(block: dict) -> theory.LyapunovSettings:
    return theory.LyapunovSettings(**(block.get("lyapunov") or {}))


# ----------------------------------------------------------------------------- predictions
def predict(model: dict, criterion: str, settings=None) -> dict:
    """{"alpha", "stderr"} of a model by criterion (theory section 8)."""
    if model["kind"] == "iid":
        return theory.iid_edge(model["probs"], criterion, settings=settings)
    return theory.worker_edge(model["workers"], criterion, model["landing"], settings=settings)


def prediction_rows(block: dict, log=print) -> list[dict]:
    settings = lyapunov_settings(block)
    rows = []
    for label, model in models(block).items():
        for criterion in theory.CRITERIA:
            try:
                r = predict(model, criterion, settings)
            except ValueError as exc:  # a Gaussian-rule mode space too large for the exact criteria
                log(f"{label} {criterion}: not computed ({exc})")
                r = {"alpha": None, "stderr": None}
            rows.append({"model": label, "kind": model["kind"], "workers": model.get("workers"),
                         "landing": model.get("landing"), "mean_staleness": mean_staleness(model),
                         "criterion": criterion, "alpha": r["alpha"], "stderr": r["stderr"]})
            log(f"{label} {criterion}: alpha* = {r['alpha']}")
    return rows


# ----------------------------------------------------------------------------- the searches
def run_model(*, kick: dict, base_spec: dict, continuation: dict, search: dict, label: str, model: dict,
              seeds, out_dir, log=print) -> list[dict]:
    """The fig. 2 search under the model's schedule, once per seed."""
    from .stability import search_threshold

    results = []
    for seed in seeds:
        overrides = {"seed": int(seed), "optimizer": optimizer_overrides(model)}
        result = search_threshold(base_spec=base_spec, continuation=continuation, kick=kick, search=search,
                                  variant="plain", momentum=0.0, tau=nominal_tau(model),
                                  out_dir=Path(out_dir) / f"seed{int(seed)}", log=log,
                                  alpha_theory=None, spec_overrides=overrides)
        result.update(label=label, model=model, seed=int(seed))
        results.append(result)
    return results


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
def real_worker_predictors(workers: int, histogram, settings=None) -> dict:
    """predictor -> (source, criterion, α*) for one setting: every criterion from the measured
    histogram (i.i.d. model), from the worker count (uniform workers), and round robin (τ = M − 1)."""
    out = {}
    for criterion in theory.CRITERIA:
        out[f"histogram/{criterion}"] = ("histogram", criterion,
                                         theory.iid_edge(histogram, criterion, settings=settings)["alpha"])
        out[f"workers/{criterion}"] = ("workers", criterion,
                                       theory.worker_edge(workers, criterion, settings=settings)["alpha"])
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


# ----------------------------------------------------------------------------- command line
def _block(args) -> dict:
    return json.loads(args.block)


def _cli_theory(args):
    rows = prediction_rows(_block(args))
    write_csv(args.out, PREDICTION_COLUMNS, rows)
    print(f"wrote {len(rows)} rows to {args.out}")


def _cli_search(args):
    from ..spec import read_spec

    block = _block(args)
    model = check_model(args.label, block["models"][args.label])
    results = run_model(kick=read_json(args.kick, "kick record"), base_spec=read_spec(args.spec),
                        continuation=json.loads(args.continuation), search=json.loads(args.search),
                        label=args.label, model=model, seeds=block["seeds"], out_dir=Path(args.out).parent)
    write_json_atomic(args.out, {"label": args.label, "model": model, "searches": results})
    for r in results:
        print(f"{args.label} seed={r['seed']}: alpha_measured = {r['alpha_measured']:.6g}"
              f"{' (censored)' if r['censored'] else ''}")


def _cli_collect(args):
    rows = collect(args.predictions, args.search or [], args.edges, args.summary, args.markdown)
    for r in rows:
        measured = f"{r['alpha_mean']:.4g} [{r['ci_low']:.4g}, {r['ci_high']:.4g}]" if r["measured"] else "not measured"
        print(f"{r['model']:>16}: measured {measured}; mean-square {r['alpha_mean_square_edge']}, "
              f"almost-sure {r['alpha_almost_sure_edge']}")


def scores_markdown(scores: list[dict]) -> str:
    lines = ["| predictor | source | criterion | correct calls |", "|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s['predictor']} | {s['source']} | {s['criterion']} | {s['correct']}/{s['total']} |")
    return "\n".join(lines) + "\n"


def _cli_rescore(args):
    settings = theory.LyapunovSettings(**json.loads(args.lyapunov))
    rows, scores = rescore(args.continuations, args.histograms, settings)
    write_csv(args.rescored, RESCORE_COLUMNS, rows)
    write_csv(args.scores, SCORE_COLUMNS, scores)
    if args.markdown:
        write_text_atomic(args.markdown, scores_markdown(scores))
    for s in scores:
        print(f"{s['predictor']:>24}: {s['correct']}/{s['total']} calls correct")


def register(subparsers) -> None:
    p = subparsers.add_parser("random-staleness-theory",
                              help="predicted edges (mean, mean-square, almost-sure) of every staleness model")
    p.add_argument("--block", required=True, help="JSON: the random_staleness config block")
    p.add_argument("--out", required=True, help="predictions.csv")
    p.set_defaults(func=_cli_theory)

    p = subparsers.add_parser("random-staleness-search", help="stability searches of one staleness model, per seed")
    p.add_argument("--kick", required=True, help="kick.json of the source experiment")
    p.add_argument("--spec", required=True, help="the source experiment's baseline spec")
    p.add_argument("--continuation", default="{}", help="JSON: spec overrides of every continuation")
    p.add_argument("--search", required=True, help="JSON: the search settings")
    p.add_argument("--block", required=True, help="JSON: the random_staleness config block")
    p.add_argument("--label", required=True, help="the model's label in the block")
    p.add_argument("--out", required=True, help="searches.json; probes go in seed<s>/ folders beside it")
    p.set_defaults(func=_cli_search)

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
