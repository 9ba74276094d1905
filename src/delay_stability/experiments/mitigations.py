"""Which delay mitigations keep the minima? (beyond the paper; theory section 6)

For each published rule (``theory.MITIGATIONS``; plain delayed SGD as the reference) and each τ of the
block, the minima-stability search of fig. 2 (experiments/stability.py) is run from the kicked minimum
of another experiment (``from``, default ``stability``: its baseline, minimum, sharpness a and kick
are reused, not retrained): the largest base step η that stays at the minimum, beside the theory's
edge η* = α*/a (``theory.mitigation_alpha``; gap-aware: ``theory.gap_aware_alpha`` on the scalar
recurrence, a numerical guess for the network's elementwise rule). One job per rule runs every τ
(``delay-stability mitigations-search``); ``delay-stability mitigations-collect``
(experiments/mitigations_tables.py, apart so that editing a table never reruns a search) writes

    results/<scale>/mitigations/edges.csv   mitigation, hyperparameters (JSON), tau, lr_max (measured),
                                            predicted (η at the edge), ratio (lr_max/predicted), exact
                                            (true where the theory is an exact linearisation), and
                                            sharpness, alpha_measured, alpha_predicted, censored,
                                            n_probes, budget_epochs

and ``figures/mitigations.pdf`` reads that table. The search settings are those of ``from``'s block,
overridden by this block's ``search`` (fewer probes at the quick scale). A rule whose predicted edge
is infinite (the threshold rule capping the step at 1/(4Lτ)) is searched up to ``search.alpha_max``
and reported censored.

DC-ASGD at a full-batch minimum: the correction is cubic in the distance, so the prediction is plain
A-SGD's edge whatever λ (c = 0, exact). ``noise_c`` computes c = λ·vᵀ diag(E[g²]) v / a at the
minimum (v the top eigenvector) for minibatches of B samples, and the edge it would predict
(``delay-stability mitigations-noise``, results/<scale>/mitigations/noise.csv).
"""

from __future__ import annotations

import math
from pathlib import Path

from .. import theory
from ..errors import UserError
from ..files import parse_json_object, read_json, write_csv
from ..files import write_json as write_json_atomic
from ..spec import deep_merge, read_spec

#: Columns of noise.csv.
NOISE_COLUMNS = ("mitigation", "lambda0", "batch_size", "mean_sq_grad", "c", "tau", "alpha_predicted",
                 "alpha_plain")


# ----------------------------------------------------------------------------- the grid
def rules(block: dict) -> dict:
    """label -> {name, hyperparameters} of every rule of the block (``name: null`` = plain A-SGD)."""
    out = {}
    for label, entry in block["rules"].items():
        name = entry.get("name")
        hp = {k: v for k, v in entry.items() if k != "name"}
        if name is not None:
            theory.check_mitigation(name, hp)
        elif hp:
            raise UserError(f"mitigations.rules.{label}: plain A-SGD (name: null) takes no hyperparameters "
                            f"(got {', '.join(sorted(hp))})")
        out[label] = {"name": name, "hyperparameters": hp}
    return out


def search_file(exp_dir, label: str) -> str:
    """``<exp_dir>/search/<label>/searches.json``: every τ of one rule."""
    return str(Path(exp_dir) / "search" / label / "searches.json")


def search_settings(source_block: dict, block: dict) -> dict:
    """The source experiment's search settings with this block's overrides."""
    return deep_merge(source_block["search"], block.get("search") or {})


# ----------------------------------------------------------------------------- the theory's side
def optimizer_mitigation(rule: dict, sharpness: float) -> dict | None:
    """The spec's ``optimizer.mitigation`` of a rule: the threshold rule's L defaults to the sharpness."""
    if rule["name"] is None:
        return None
    _, hp = theory.check_mitigation(rule["name"], rule["hyperparameters"])
    if rule["name"] == "delay-adaptive-threshold" and hp["smoothness"] is None:
        hp["smoothness"] = float(sharpness)
    return {"name": rule["name"], **hp}


def predicted_alpha(rule: dict, tau: int, sharpness: float, c: float = 0.0, search: dict | None = None) -> float:
    """α* = a·η* of the rule at constant delay τ (plain: eq. 6 by the root locus). Gap-aware: the
    scalar recurrence's numerical edge over the search's budget (in steps) and escape growth when
    ``search`` is given (kick_growth escape), else theory's defaults."""
    if rule["name"] is None:
        return theory.critical_alpha(int(tau))
    if rule["name"] == "gap-aware" and search and search["escape"]["kind"] == "kick_growth":
        from .stability import probe_budget

        return theory.gap_aware_alpha(int(tau), rule["hyperparameters"], steps=probe_budget(int(tau), search),
                                      growth=float(search["escape"]["growth"]))
    return theory.mitigation_alpha(rule["name"], int(tau), rule["hyperparameters"], c=c, sharpness=sharpness)


def is_exact(rule: dict) -> bool:
    return True if rule["name"] is None else theory.mitigation_is_exact(rule["name"])


# ----------------------------------------------------------------------------- the searches
def run_rule(*, kick: dict, base_spec: dict, continuation: dict, search: dict, label: str, rule: dict,
             taus, out_dir, log=print) -> list[dict]:
    """The threshold search of one rule for every τ (stability.search_threshold with the rule)."""
    from .stability import search_threshold

    a = float(kick["sharpness"])
    mitigation = optimizer_mitigation(rule, a)
    results = []
    for tau in taus:
        alpha_p = predicted_alpha(rule, tau, a, search=search)
        result = search_threshold(base_spec=base_spec, continuation=continuation, kick=kick, search=search,
                                  variant="plain", momentum=0.0, tau=int(tau),
                                  out_dir=Path(out_dir) / f"tau{int(tau)}", log=log,
                                  mitigation=mitigation, alpha_theory=alpha_p)
        result.update(label=label, rule=rule, exact=is_exact(rule))
        results.append(result)
    return results


# ----------------------------------------------------------------------------- DC-ASGD's noise parameter c
def noise_c(*, checkpoint, kick: dict, batch_sizes, lambdas, taus) -> list[dict]:
    """c = λ·vᵀ diag(E[g²]) v / a at the minimum for minibatches of B samples drawn without
    replacement from the N training samples: E[g_i²] = ḡ_i² + (N − B)/(B (N − 1))·Var_n(g_{n,i}),
    with g_n the per-sample gradients (ḡ their mean, ≈ 0 at the minimum) and v the unit top eigenvector
    (the kick direction: kicked minus minimum weights; without a kick, c and its edge are left empty).
    B = 0 is the full batch (E[g²] = ḡ²).
    Each row also carries DC-ASGD's edge at that c (``theory.dc_polynomial``, the noise model)."""
    import torch

    from ..data import load_dataset
    from ..train import build_loss, model_from_checkpoint

    model, spec = model_from_checkpoint(checkpoint, device="cpu")
    kicked, _ = model_from_checkpoint(kick["checkpoint"], device="cpu")
    params = list(model.parameters())
    v = torch.cat([(k.detach() - p.detach()).reshape(-1) for k, p in zip(kicked.parameters(), params)])
    norm = float(v.norm())
    # A kick of norm 0 (as in smoke mode) gives no direction: c is undefined there, recorded as NaN.
    v = v / norm if norm > 0 and math.isfinite(norm) else torch.full_like(v, math.nan)
    data = load_dataset(spec, device="cpu")
    loss_fn = build_loss(spec)
    x, y = data.train_x, data.train_y
    n = x.shape[0]
    per_sample = []
    for i in range(n):
        model.zero_grad()
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()
        per_sample.append(torch.cat([p.grad.reshape(-1) for p in params]).detach().clone())
    g = torch.stack(per_sample)
    mean, var = g.mean(dim=0), g.var(dim=0, unbiased=True)
    a = float(kick["sharpness"])
    rows = []
    for B in batch_sizes:
        B = int(B)
        fpc = 0.0 if B == 0 or B >= n else (n - B) / (B * (n - 1))
        weighted = float((v**2 * (mean**2 + fpc * var)).sum())
        for name, lam in lambdas.items():
            c = float(lam) * weighted / a if a > 0 else math.nan
            for tau in taus:
                rows.append({"mitigation": name, "lambda0": float(lam), "batch_size": B, "mean_sq_grad": weighted,
                             "c": c, "tau": int(tau),
                             "alpha_predicted": (theory.mitigation_alpha("dc-asgd-c", int(tau), c=c)
                                                 if math.isfinite(c) else None),
                             "alpha_plain": theory.critical_alpha(int(tau))})
    return rows


# ----------------------------------------------------------------------------- command line
def _cli_search(args):
    kick = read_json(args.kick, "kick record")
    rule = parse_json_object(args.rule, "--rule")
    results = run_rule(kick=kick, base_spec=read_spec(args.spec),
                       continuation=parse_json_object(args.continuation, "--continuation"),
                       search=parse_json_object(args.search, "--search"), label=args.label, rule=rule,
                       taus=[int(t) for t in args.taus.split(",")], out_dir=Path(args.out).parent)
    write_json_atomic(args.out, {"label": args.label, "rule": rule, "searches": results})
    for r in results:
        print(f"{args.label} tau={r['tau']}: alpha_measured = {r['alpha_measured']:.6g}, "
              f"predicted {r['alpha_theory']:.6g}{' (censored)' if r['censored'] else ''}")


def _cli_noise(args):
    rows = noise_c(checkpoint=args.checkpoint, kick=read_json(args.kick, "kick record"),
                   batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                   lambdas=parse_json_object(args.lambdas, "--lambdas"),
                   taus=[int(t) for t in args.taus.split(",")])
    write_csv(args.out, NOISE_COLUMNS, rows)
    print(f"wrote {len(rows)} rows to {args.out}")


def register(subparsers) -> None:
    p = subparsers.add_parser("mitigations-search", help="stability searches of one delay mitigation over tau")
    p.add_argument("--kick", required=True, help="kick.json of the source experiment")
    p.add_argument("--spec", required=True, help="the source experiment's baseline spec")
    p.add_argument("--continuation", default="{}", help="JSON: spec overrides of every continuation")
    p.add_argument("--search", required=True, help="JSON: the search settings")
    p.add_argument("--rule", required=True, help='JSON: {"name": <mitigation or null>, "hyperparameters": {...}}')
    p.add_argument("--label", required=True)
    p.add_argument("--taus", required=True, help="comma-separated delays")
    p.add_argument("--out", required=True, help="searches.json; probes go in tau<τ>/ folders beside it")
    p.set_defaults(func=_cli_search)

    p = subparsers.add_parser("mitigations-noise", help="DC-ASGD's noise parameter c at a minimum")
    p.add_argument("--checkpoint", required=True, help="the minimum")
    p.add_argument("--kick", required=True)
    p.add_argument("--batch-sizes", required=True)
    p.add_argument("--lambdas", required=True, help='JSON: {"label": lambda0}')
    p.add_argument("--taus", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cli_noise)
