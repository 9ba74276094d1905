"""edges.csv of the delay-mitigations experiment from its searches (``delay-stability
mitigations-collect``; the searches: experiments/mitigations.py). Kept apart from the code that
trains, so that editing the table never reruns a search."""

from __future__ import annotations

import json
import math

from ..errors import UserError
from ..files import read_json, write_csv
from .mitigations import optimizer_mitigation, rules

#: Columns of edges.csv: the issue's names first, then what the figure and the audit need.
EDGE_COLUMNS = ("mitigation", "hyperparameters", "tau", "lr_max", "predicted", "ratio", "exact",
                "sharpness", "alpha_measured", "alpha_predicted", "censored", "n_probes", "budget_epochs")


def edge_row(result: dict) -> dict:
    """One row of edges.csv from a search result of ``mitigations.run_rule``: predicted = α*/a (the
    base step at the theory's edge; inf where no base step leaves, stored as null in the JSON),
    ratio = lr_max/predicted (empty where predicted is inf)."""
    rule, a = result["rule"], float(result["sharpness"])
    alpha_p = math.inf if result["alpha_theory"] is None else float(result["alpha_theory"])
    predicted = alpha_p / a
    return {
        "mitigation": result["label"], "hyperparameters": json.dumps(rule["hyperparameters"], sort_keys=True),
        "tau": result["tau"], "lr_max": result["lr_max"], "predicted": predicted,
        "ratio": result["lr_max"] / predicted if math.isfinite(predicted) else None,
        "exact": bool(result["exact"]), "sharpness": a, "alpha_measured": result["alpha_measured"],
        "alpha_predicted": alpha_p, "censored": bool(result["censored"]), "n_probes": len(result["probes"]),
        "budget_epochs": result["budget_epochs"],
    }


def collect(search_files, out_csv) -> list[dict]:
    """edges.csv from the searches.json of every rule (rows in the order of the files, then τ)."""
    rows = []
    for path in search_files:
        for result in read_json(path, "mitigation searches")["searches"]:
            rows.append(edge_row(result))
    write_csv(out_csv, EDGE_COLUMNS, rows)
    return rows


def config_specs(exp: dict, settings):
    """(config key, spec) of every training run of the ``mitigations`` block of ``exp`` (registry
    role ``specs``): a continuation of its source experiment (``from``, which must exist at the
    scale) per rule, with stand-in lr, delay and start."""
    from .stability import probe_spec

    block = exp["mitigations"]
    source = block["from"]
    if source not in exp:
        raise UserError(f"mitigations.from: no {source!r} block at this scale")
    try:
        rules_ = rules(block)
    except (UserError, ValueError) as exc:
        raise UserError(f"mitigations.rules: {exc}") from None
    baseline = settings(exp[source]["baseline"])
    for label, rule in rules_.items():
        yield f"mitigations.rules.{label}", probe_spec(
            baseline, exp[source]["continuation"], lr=1.0, tau=1, variant="plain", momentum=0.0,
            init_checkpoint="kicked.pt", epochs=1, mitigation=optimizer_mitigation(rule, 1.0))


def _cli_collect(args):
    rows = collect(args.search, args.out)
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.4f}"
        print(f"{r['mitigation']:>26} tau={int(r['tau']):<3d} lr_max/predicted = {ratio}"
              f"{' (censored)' if r['censored'] else ''}")


def register(subparsers) -> None:
    p = subparsers.add_parser("mitigations-collect", help="edges.csv of the delay mitigations")
    p.add_argument("--search", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cli_collect)
