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
from ..files import read_json, write_csv
from ..files import write_json as write_json_atomic

PREDICTION_COLUMNS = ("model", "kind", "workers", "landing", "mean_staleness", "criterion", "alpha", "stderr")


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
